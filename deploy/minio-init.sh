#!/bin/sh
# Creates Lethe's buckets in MinIO: versioned (erasure must reach every version) and encrypted
# at rest with MinIO's KMS key (SSE-S3). Idempotent: safe to run on every `docker compose up`.
set -eu
prefix="${LETHE_BUCKET_PREFIX:-lethe}"
mc alias set lethe "${S3_ENDPOINT:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in "$prefix-backup-us-east-1" "$prefix-backup-ap-southeast-1" "$prefix-sharing" "$prefix-evidence"; do
  mc mb --ignore-existing "lethe/$bucket"
  mc version enable "lethe/$bucket"
  mc encrypt set sse-s3 "lethe/$bucket"
done
echo "buckets ready"
