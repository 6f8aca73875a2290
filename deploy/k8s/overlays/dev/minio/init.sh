#!/bin/sh
# One-shot MinIO setup, safe to run on every `docker compose up`: the bucket, a policy
# limited to that bucket, and the services' own S3 user with that policy. The services
# never hold the root credentials.
set -eu

mc alias set root "$MINIO_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "root/$BUCKET"

policy_file=/tmp/posttrain-policy.json
# printf, not a cat heredoc: the minio image is minimal.
printf '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::%s", "arn:aws:s3:::%s/*"]}]}\n' \
  "$BUCKET" "$BUCKET" >"$policy_file"
mc admin policy create root posttrain "$policy_file"

# `user add` on an existing user updates its secret, so rotating the key is a re-run.
mc admin user add root "$SERVICE_ACCESS_KEY" "$SERVICE_SECRET_KEY"
if ! out=$(mc admin policy attach root posttrain --user "$SERVICE_ACCESS_KEY" 2>&1); then
  case "$out" in
    *"already in effect"*) ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "bucket $BUCKET ready for S3 user $SERVICE_ACCESS_KEY"
