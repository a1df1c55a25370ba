#!/usr/bin/env bash
# aws ec2 run-instances --instance-type t3.medium --image-id <Ubuntu 24.04 AMI> --iam-instance-profile Name=poster-ray-mlflow --security-group-ids <sg> --subnet-id <subnet of the Ray cluster> --user-data file://cluster/mlflow_host.sh
#
# EC2 user data of the MLflow host for cluster/aws.yaml: its own instance, never a Ray node. It is
# the only machine holding MLflow's basic-auth admin configuration (Secrets Manager
# poster-ray/mlflow-basic-auth, readable only by this instance's profile poster-ray-mlflow) and the
# MLflow databases. No job driver or worker runs here, so no job can read the admin password or
# write the registry database behind the server's permission checks (cluster/README.md, "MLflow
# identities"). Open port 5000 in its security group to the Ray cluster's group only.
set -euo pipefail
apt-get update -q && apt-get install -y -q python3-venv
id mlflow >/dev/null 2>&1 || useradd --system --create-home --home-dir /srv/mlflow --shell /usr/sbin/nologin mlflow
python3 -m venv /srv/mlflow/venv
# Flask-WTF: the basic-auth app's CSRF protection; boto3: artifacts in S3 and the secret below
/srv/mlflow/venv/bin/pip install -q 'mlflow==3.17.2' 'Flask-WTF>=1.2' 'boto3>=1.34'
umask 077
/srv/mlflow/venv/bin/python -c "import boto3; print(boto3.client('secretsmanager', region_name='us-west-2').get_secret_value(SecretId='poster-ray/mlflow-basic-auth')['SecretString'])" > /srv/mlflow/basic_auth.ini
[ -s /srv/mlflow/flask_key ] || /srv/mlflow/venv/bin/python -c 'import secrets; print(secrets.token_hex(32))' > /srv/mlflow/flask_key
chown -R mlflow:mlflow /srv/mlflow
cat > /etc/systemd/system/mlflow.service <<'UNIT'
[Unit]
Description=MLflow tracking server (basic-auth) for poster-ray
After=network-online.target
[Service]
User=mlflow
WorkingDirectory=/srv/mlflow
Environment=MLFLOW_AUTH_CONFIG_PATH=/srv/mlflow/basic_auth.ini MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
ExecStart=/bin/bash -c 'MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat /srv/mlflow/flask_key)" exec /srv/mlflow/venv/bin/mlflow server --app-name basic-auth --host "$(hostname -I | cut -d" " -f1)" --port 5000 --workers 2 --backend-store-uri sqlite:////srv/mlflow/mlflow.db --artifacts-destination s3://your-bucket/mlflow-artifacts'
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload && systemctl enable --now mlflow
