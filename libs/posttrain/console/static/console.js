// The console's only script: a job's live progress and keyboard shortcuts.
// Pages work without it; it only saves reloads and mouse trips.
"use strict";

function typing(target) {
  return target && (target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
    (target.tagName === "INPUT" && !["radio", "checkbox", "submit", "button", "hidden"].includes(target.type)));
}

// ---- a training job's progress, polled until it ends
function pollJob() {
  const live = document.getElementById("live");
  if (!live || live.dataset.terminal === "true") return;
  const every = Number(document.body.dataset.pollMs) || 1000;
  const tick = async () => {
    try {
      const response = await fetch(live.dataset.progressUrl, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (!response.ok) throw new Error(response.status);
      const job = await response.json();
      const bar = document.getElementById("job-progress");
      bar.max = job.total_steps || 1;
      bar.value = job.step;
      document.getElementById("job-steps").textContent = `step ${job.step} / ${job.total_steps || "?"}`;
      document.getElementById("job-loss").textContent = job.loss;
      const state = document.getElementById("job-state");
      state.textContent = job.state;
      state.className = `badge job-${job.state}`;
      document.getElementById("loss-chart").innerHTML = job.chart;  // SVG drawn by the server
      const error = document.getElementById("job-error");
      error.textContent = job.error;
      error.hidden = !job.error;
      if (job.terminal) {
        live.dataset.terminal = "true";
        const cancel = document.getElementById("do-cancel_job");
        if (cancel) cancel.disabled = true;
        return;
      }
    } catch (e) {
      console.warn("progress poll failed", e);
    }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

// ---- human review: 1-5 score, c comment, Enter submit
function reviewKeys() {
  const form = document.getElementById("review-form");
  if (!form) return;
  const label = document.getElementById("review-label");
  let autoLabel = "";
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const inText = typing(event.target);
    if (!inText && /^[1-5]$/.test(event.key)) {
      const radio = document.getElementById(`score-${event.key}`);
      if (radio && !radio.disabled) {
        radio.checked = true;
        if (!label.value || label.value === autoLabel) label.value = autoLabel = radio.dataset.label;
      }
      event.preventDefault();
    } else if (!inText && event.key === "c") {
      document.getElementById("review-comment").focus();
      event.preventDefault();
    } else if (event.key === "Enter" && event.target.tagName !== "TEXTAREA" || (event.key === "Enter" && event.target.tagName === "TEXTAREA" && !event.shiftKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("change", (event) => {
    if (event.target.name === "score" && (!label.value || label.value === autoLabel)) {
      label.value = autoLabel = event.target.dataset.label;
    }
  });
}

// ---- "g" then a letter: go to a page
function navigationKeys() {
  const pages = {d: "/datasets", j: "/jobs", m: "/models", e: "/evaluations", r: "/review", x: "/deployments"};
  let pending = false;
  document.addEventListener("keydown", (event) => {
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (pending && pages[event.key]) {
      window.location.assign(pages[event.key]);
    }
    pending = event.key === "g" && !document.getElementById("review-form");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  pollJob();
  reviewKeys();
  navigationKeys();
});
