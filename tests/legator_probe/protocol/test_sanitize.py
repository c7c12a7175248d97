"""The credential sanitiser: a corpus of secrets that must go and of look-alikes that must stay."""

import copy
from typing import Any

import pytest

from legator_probe.protocol import sanitize as sanitize_module
from legator_probe.protocol.sanitize import REDACTED, is_secret_key, sanitize, sanitize_mapping

# Fake credentials shaped like the real ones. None of them is live.
MIXED36 = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
HEX64 = "0123456789abcdef" * 4
B64 = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbA=="
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = (
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
)
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

SECRETS = [
    # AWS
    pytest.param(
        "2024-05-01T12:00:00Z INFO s3: using credentials AKIAIOSFODNN7EXAMPLE for bucket logs",
        "2024-05-01T12:00:00Z INFO s3: using credentials [REDACTED] for bucket logs",
        id="aws-access-key-id-in-log",
    ),
    pytest.param("AWS_ACCESS_KEY_ID=ASIAY34FZKBOKMUTVV7A", "AWS_ACCESS_KEY_ID=[REDACTED]", id="aws-sts-key-id-env"),
    pytest.param(
        f"[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {AWS_SECRET}\n"
        "region = eu-west-1\n",
        "[default]\naws_access_key_id = [REDACTED]\naws_secret_access_key = [REDACTED]\nregion = eu-west-1\n",
        id="aws-credentials-file",
    ),
    pytest.param(
        f'{{"Credentials": {{"AccessKeyId": "ASIAY34FZKBOKMUTVV7A", "SecretAccessKey": "{AWS_SECRET}", '
        '"SessionToken": "FwoGZXIvYXdzEBYaDHqa0AP1/3ZCYRaX8yKAAbc"}}',
        '{"Credentials": {"AccessKeyId": "[REDACTED]", "SecretAccessKey": "[REDACTED]", "SessionToken": "[REDACTED]"}}',
        id="aws-sts-json",
    ),
    pytest.param(
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240501"
        f"&X-Amz-Signature={HEX64}",
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=[REDACTED]"
        "&X-Amz-Signature=[REDACTED]",
        id="s3-presigned-url",
    ),
    # Google Cloud
    pytest.param(
        '{\n  "type": "service_account",\n  "private_key_id": "4f5e1b2c3d",\n'
        '  "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n'
        '-----END PRIVATE KEY-----\\n",\n'
        '  "client_email": "ci@proj.iam.gserviceaccount.com"\n}',
        '{\n  "type": "service_account",\n  "private_key_id": "4f5e1b2c3d",\n  "private_key": "[REDACTED]",\n'
        '  "client_email": "ci@proj.iam.gserviceaccount.com"\n}',
        id="gcp-service-account-json",
    ),
    pytest.param(
        f"GET https://maps.googleapis.com/maps/api/geocode/json?address=x&key=AIzaSyD{MIXED36[:32]} 200",
        "GET https://maps.googleapis.com/maps/api/geocode/json?address=x&key=[REDACTED] 200",
        id="google-api-key-in-url",
    ),
    # Azure
    pytest.param(
        "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=legatorlogs;"
        f"AccountKey={B64};EndpointSuffix=core.windows.net",
        "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=legatorlogs;"
        "AccountKey=[REDACTED];EndpointSuffix=core.windows.net",
        id="azure-storage-connection-string",
    ),
    pytest.param(
        "az storage blob download --blob-url 'https://acct.blob.core.windows.net/c/b?sv=2022-11-02&ss=b"
        "&sig=AbC%2FdEf123%3D&se=2024'",
        "az storage blob download --blob-url 'https://acct.blob.core.windows.net/c/b?sv=2022-11-02&ss=b"
        "&sig=[REDACTED]&se=2024'",
        id="azure-sas-signature",
    ),
    # GitHub, GitLab
    pytest.param(
        f"origin\thttps://ghp_{MIXED36}@github.com/acme/infra.git (fetch)",
        "origin\thttps://[REDACTED]@github.com/acme/infra.git (fetch)",
        id="github-ghp-in-git-remote",
    ),
    pytest.param(
        f'{{"access_token": "gho_{MIXED36}", "scope": "repo"}}',
        '{"access_token": "[REDACTED]", "scope": "repo"}',
        id="github-gho-json",
    ),
    pytest.param(
        f"refreshing user token ghu_{MIXED36} expires=2024-06-01",
        "refreshing user token [REDACTED] expires=2024-06-01",
        id="github-ghu-in-log",
    ),
    pytest.param(
        f"git clone https://x-access-token:ghs_{MIXED36}@github.com/acme/app",
        "git clone https://x-access-token:[REDACTED]@github.com/acme/app",
        id="github-ghs-x-access-token",
    ),
    pytest.param(f"GITHUB_REFRESH_TOKEN=ghr_{MIXED36}", "GITHUB_REFRESH_TOKEN=[REDACTED]", id="github-ghr-env"),
    pytest.param(
        f"gh auth login --with-token <<< github_pat_11ABCDEFG0{MIXED36}_xYz",
        "gh auth login --with-token <<< [REDACTED]",
        id="github-fine-grained-pat",
    ),
    pytest.param(
        f'curl --header "PRIVATE-TOKEN: glpat-{MIXED36[:20]}" https://gitlab.example.com/api/v4/projects',
        'curl --header "PRIVATE-TOKEN: [REDACTED]" https://gitlab.example.com/api/v4/projects',
        id="gitlab-pat-header",
    ),
    # Slack
    pytest.param(
        f"SLACK_BOT_TOKEN=xoxb-2401234567-5012345678901-{MIXED36[:24]}",
        "SLACK_BOT_TOKEN=[REDACTED]",
        id="slack-bot-token",
    ),
    pytest.param(
        f"slack: posting as xoxp-2401234567-2401234567-5012345678901-{HEX64[:32]}",
        "slack: posting as [REDACTED]",
        id="slack-user-token",
    ),
    pytest.param(
        f"slack_legacy xoxa-2-2401234567-5012345678901-{MIXED36[:20]} ok",
        "slack_legacy [REDACTED] ok",
        id="slack-workspace-token",
    ),
    pytest.param(
        f"app_level: xapp-1-A0123456789-5012345678901-{HEX64}",
        "app_level: [REDACTED]",
        id="slack-app-token",
    ),
    pytest.param(
        f"webhook_url: https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/{MIXED36[:24]}",
        "webhook_url: https://hooks.slack.com/services/[REDACTED]",
        id="slack-webhook-url",
    ),
    # Payment, messaging, AI and package registries
    pytest.param(
        f"Stripe::StripeError: Invalid API Key provided: sk_live_{MIXED36[:24]}",
        "Stripe::StripeError: Invalid API Key provided: [REDACTED]",
        id="stripe-secret-key",
    ),
    pytest.param(
        f"STRIPE_KEY=rk_live_{MIXED36[:24]} ruby app.rb",
        "STRIPE_KEY=[REDACTED] ruby app.rb",
        id="stripe-restricted-key",
    ),
    pytest.param(
        f"twilio api:core:messages:create --api-key SK{HEX64[:32]} --to +15555550100",
        "twilio api:core:messages:create --api-key [REDACTED] --to +15555550100",
        id="twilio-api-key",
    ),
    pytest.param(f"SENDGRID=SG.{MIXED36[:22]}.{MIXED36}abcdefg", "SENDGRID=[REDACTED]", id="sendgrid-api-key"),
    pytest.param(f"openai.api_key = 'sk-{MIXED36}ABCDEFGHIJKL'", "openai.api_key = '[REDACTED]'", id="openai-key"),
    pytest.param(
        f"Using key sk-proj-{MIXED36}_{MIXED36} for org", "Using key [REDACTED] for org", id="openai-project-key"
    ),
    pytest.param(f"x-api-key: sk-ant-api03-{MIXED36}{MIXED36}-AA", "x-api-key: [REDACTED]", id="anthropic-key"),
    pytest.param(
        f"//registry.npmjs.org/:_authToken=npm_{MIXED36}", "//registry.npmjs.org/:_authToken=[REDACTED]", id="npm-token"
    ),
    pytest.param(
        f"[pypi]\nusername = __token__\npassword = pypi-AgEIcHlwaS5vcmcCJDg5{MIXED36}\n",
        "[pypi]\nusername = __token__\npassword = [REDACTED]\n",
        id="pypi-token-in-pypirc",
    ),
    pytest.param(
        f"echo dckr_pat_{MIXED36[:27]} | docker login -u acme --password-stdin",
        "echo [REDACTED] | docker login -u acme --password-stdin",
        id="docker-hub-pat",
    ),
    pytest.param(
        f"curl https://api.telegram.org/bot123456789:AAE{MIXED36[:32]}/getMe",
        "curl https://api.telegram.org/bot[REDACTED]/getMe",
        id="telegram-bot-token",
    ),
    # HashiCorp Vault, Heroku
    pytest.param(f"VAULT_TOKEN=hvs.CAESI{MIXED36}{MIXED36}", "VAULT_TOKEN=[REDACTED]", id="vault-service-token"),
    pytest.param("vault login s.Ga5jyNq6kNfRMVQk2LY1j9iu", "vault login [REDACTED]", id="vault-legacy-token"),
    pytest.param(
        "Key         Value\n---         -----\npassword    hunter2 horse\nttl         768h\n",
        "Key         Value\n---         -----\npassword    [REDACTED]\nttl         768h\n",
        id="vault-kv-get-table",
    ),
    pytest.param(
        "HEROKU_API_KEY=01234567-89ab-cdef-0123-456789abcdef", "HEROKU_API_KEY=[REDACTED]", id="heroku-api-key-env"
    ),
    pytest.param(
        f"heroku authorizations:create -> Token: HRKU-AA{MIXED36}_{MIXED36[:20]}",
        "heroku authorizations:create -> Token: [REDACTED]",
        id="heroku-platform-token",
    ),
    # JWTs and HTTP headers
    pytest.param(
        f'level=info msg="request" jwt={JWT} path=/api',
        'level=info msg="request" jwt=[REDACTED] path=/api',
        id="jwt-in-log",
    ),
    pytest.param(
        f"the failing token was {JWT}, please rotate",
        "the failing token was [REDACTED], please rotate",
        id="jwt-in-prose",
    ),
    pytest.param(
        f"> GET /api/v1/probes HTTP/1.1\n> Host: legator\n> Authorization: Bearer {MIXED36}\n> Accept: */*\n",
        "> GET /api/v1/probes HTTP/1.1\n> Host: legator\n> Authorization: Bearer [REDACTED]\n> Accept: */*\n",
        id="authorization-bearer-curl-verbose",
    ),
    pytest.param(
        "Authorization: Basic YWRtaW46czNjcjN0UGFzcw==", "Authorization: Basic [REDACTED]", id="authorization-basic"
    ),
    pytest.param(
        "Proxy-Authorization: Basic dXNlcjpodW50ZXIy", "Proxy-Authorization: Basic [REDACTED]", id="proxy-authorization"
    ),
    pytest.param(
        f'{{"headers": {{"Authorization": "token ghx{MIXED36}", "Accept": "application/json"}}}}',
        '{"headers": {"Authorization": "token [REDACTED]", "Accept": "application/json"}}',
        id="authorization-in-json",
    ),
    pytest.param(
        'Authorization: Digest username="admin", realm="x", nonce="dcd98b", response="6629fae4939397450978507c4ef1"',
        "Authorization: Digest [REDACTED]",
        id="authorization-digest",
    ),
    pytest.param(
        f"upstream rejected Bearer {MIXED36} with 401",
        "upstream rejected Bearer [REDACTED] with 401",
        id="bearer-in-log",
    ),
    pytest.param("X-Api-Key: 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "X-Api-Key: [REDACTED]", id="x-api-key-header"),
    pytest.param(
        f"Cookie: session={HEX64[:32]}; csrftoken=abcDEF123",
        "Cookie: session=[REDACTED]; csrftoken=[REDACTED]",
        id="cookie-header",
    ),
    pytest.param(
        f"Set-Cookie: sid={MIXED36}; Path=/; HttpOnly; Secure",
        "Set-Cookie: sid=[REDACTED]; Path=/; HttpOnly; Secure",
        id="set-cookie-header",
    ),
    pytest.param(
        'curl -H "Cookie: legacyopaquevalue" https://cp/', 'curl -H "Cookie: [REDACTED]" https://cp/', id="cookie-bare"
    ),
    # Passwords in URLs
    pytest.param(
        "DATABASE_URL=postgres://legator:Tr0ub4dor&3@db.internal:5432/legator",
        "DATABASE_URL=postgres://legator:[REDACTED]@db.internal:5432/legator",
        id="postgres-url",
    ),
    pytest.param(
        "fetching https://deploy:hunter2@artifacts.example.com/releases/v1.2.3.tar.gz",
        "fetching https://deploy:[REDACTED]@artifacts.example.com/releases/v1.2.3.tar.gz",
        id="https-url-with-userinfo",
    ),
    pytest.param(
        "REDIS_URL=redis://:p4ssw0rd@cache:6379/0", "REDIS_URL=redis://:[REDACTED]@cache:6379/0", id="redis-url"
    ),
    pytest.param(
        'broker_url = "amqp://guest:guest-secret@rabbitmq:5672//"',
        'broker_url = "amqp://guest:[REDACTED]@rabbitmq:5672//"',
        id="amqp-url",
    ),
    pytest.param(
        "mongodb+srv://admin:p@ss:w0rd@cluster0.abcde.mongodb.net/prod?retryWrites=true",
        "mongodb+srv://admin:[REDACTED]@cluster0.abcde.mongodb.net/prod?retryWrites=true",
        id="mongodb-srv-url-password-with-at",
    ),
    # Labelled passwords and keys
    pytest.param(
        "2024-05-01 12:00:01 WARN login failed user=bob password=hunter2, retrying",
        "2024-05-01 12:00:01 WARN login failed user=bob password=[REDACTED], retrying",
        id="password-in-log-line",
    ),
    pytest.param(
        "database:\n  host: db\n  PASSWORD: correct horse battery staple  # rotated\n  port: 5432\n",
        "database:\n  host: db\n  PASSWORD: [REDACTED]  # rotated\n  port: 5432\n",
        id="password-yaml",
    ),
    pytest.param(
        '{"user": "bob", "password": "p\\"q;r", "remember": true}',
        '{"user": "bob", "password": "[REDACTED]", "remember": true}',
        id="password-json",
    ),
    pytest.param(
        '{"msg": "{\\"user\\":\\"bob\\",\\"password\\":\\"hunter2\\"}"}',
        '{"msg": "{\\"user\\":\\"bob\\",\\"password\\":\\"[REDACTED]\\"}"}',
        id="password-json-inside-json-string",
    ),
    pytest.param(
        "export DB_PASSWORD='s3cr3t value'\nexport DB_HOST=db\n",
        "export DB_PASSWORD='[REDACTED]'\nexport DB_HOST=db\n",
        id="export-db-password",
    ),
    pytest.param(
        "PGPASSWORD=Sup3rS3cret psql -h db -U app", "PGPASSWORD=[REDACTED] psql -h db -U app", id="pgpassword-env"
    ),
    pytest.param(
        "Server=db;User Id=sa;Password=Secret;Pwd2=x;Encrypt=True",
        "Server=db;User Id=sa;Password=[REDACTED];Pwd2=x;Encrypt=True",
        id="odbc-connection-string",
    ),
    pytest.param(
        "jdbc:mysql://db:3306/shop?user=app&password=s3cr3t&useSSL=true",
        "jdbc:mysql://db:3306/shop?user=app&password=[REDACTED]&useSSL=true",
        id="jdbc-url-query",
    ),
    pytest.param(
        "POST /oauth/token grant_type=client_credentials&client_id=legator&client_secret=9f8e7d6c5b4a&scope=read",
        "POST /oauth/token grant_type=client_credentials&client_id=legator&client_secret=[REDACTED]&scope=read",
        id="client-secret-form-body",
    ),
    pytest.param(
        "GET /v1/data?api_key=abc123def456&format=json HTTP/1.1",
        "GET /v1/data?api_key=[REDACTED]&format=json HTTP/1.1",
        id="api-key-query",
    ),
    pytest.param(
        "django:\n  secret_key: 'django-insecure-!x^2m@k8'\n",
        "django:\n  secret_key: '[REDACTED]'\n",
        id="secret-key-yaml",
    ),
    pytest.param("SECRET_KEY_BASE=9f8e7d6c5b4a3928", "SECRET_KEY_BASE=[REDACTED]", id="rails-secret-key-base"),
    pytest.param(
        "Settings(db_url='x', api_token='tok-9f8e7d', debug=False)",
        "Settings(db_url='x', api_token='[REDACTED]', debug=False)",
        id="python-repr",
    ),
    pytest.param("[ssh]\npassphrase = open sesame 42\n", "[ssh]\npassphrase = [REDACTED]\n", id="ini-multi-word-value"),
    pytest.param(
        "secrets:\n  api_token: >-\n    abc123def456\n    ghi789\n  other: 1\n",
        "secrets:\n  api_token: >-\n    [REDACTED]\n  other: 1\n",
        id="yaml-block-scalar",
    ),
    pytest.param(
        "HOME=/root\x00API_KEY=abc123\x00PATH=/bin", "HOME=/root\x00API_KEY=[REDACTED]\x00PATH=/bin", id="proc-environ"
    ),
    pytest.param(
        "пользователь=иван password=пароль123 ok", "пользователь=иван password=[REDACTED] ok", id="non-ascii-password"
    ),
    pytest.param(
        '{"auths": {"registry.example.com": {"auth": "dXNlcjpwYXNzd29yZA=="}}}',
        '{"auths": {"registry.example.com": {"auth": "[REDACTED]"}}}',
        id="docker-config-auth",
    ),
    pytest.param(
        "<datasource><user>app</user><password>Sup3rS3cret</password></datasource>",
        "<datasource><user>app</user><password>[REDACTED]</password></datasource>",
        id="xml-element",
    ),
    pytest.param(
        '<add key="SmtpPassword" value="m@ilPa55" />',
        '<add key="SmtpPassword" value="[REDACTED]" />',
        id="dotnet-setting",
    ),
    pytest.param(
        "    env:\n    - name: DB_PASSWORD\n      value: hunter2\n    - name: LOG_LEVEL\n      value: debug\n",
        "    env:\n    - name: DB_PASSWORD\n      value: [REDACTED]\n    - name: LOG_LEVEL\n      value: debug\n",
        id="k8s-env-name-value-yaml",
    ),
    pytest.param(
        '"env": [{"name": "STRIPE_SECRET", "value": "whatever-123"}, {"name": "PORT", "value": "80"}]',
        '"env": [{"name": "STRIPE_SECRET", "value": "[REDACTED]"}, {"name": "PORT", "value": "80"}]',
        id="k8s-env-name-value-json",
    ),
    pytest.param(
        "users:\n- name: ci\n  user:\n    token: abcdef.0123456789abcdef\n",
        "users:\n- name: ci\n  user:\n    token: [REDACTED]\n",
        id="kubeconfig-token",
    ),
    pytest.param(
        "    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n"
        "    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ==\n",
        "    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n    client-key-data: [REDACTED]\n",
        id="kubeconfig-client-key-data",
    ),
    pytest.param(
        "machine api.heroku.com login me@example.com password 01234567-89ab-cdef",
        "machine api.heroku.com login me@example.com password [REDACTED]",
        id="netrc-one-line",
    ),
    pytest.param(
        "machine github.com\n  login octocat\n  password gh0_abcdef1234\n",
        "machine github.com\n  login octocat\n  password [REDACTED]\n",
        id="netrc-multi-line",
    ),
    pytest.param(
        "# redis.conf\nrequirepass foobared-2024\nport 6379\n",
        "# redis.conf\nrequirepass [REDACTED]\nport 6379\n",
        id="redis-conf",
    ),
    pytest.param(
        "CREATE USER 'app'@'%' IDENTIFIED BY 'Sup3r''Secret';",
        "CREATE USER 'app'@'%' IDENTIFIED BY '[REDACTED]';",
        id="sql-identified-by",
    ),
    pytest.param(
        "ALTER ROLE legator WITH LOGIN PASSWORD 'md5abc123';",
        "ALTER ROLE legator WITH LOGIN PASSWORD '[REDACTED]';",
        id="sql-with-password",
    ),
    # Command lines
    pytest.param(
        "mysql --user root --password Sup3rS3cret -h db",
        "mysql --user root --password [REDACTED] -h db",
        id="flag-space",
    ),
    pytest.param(
        "mysqldump --password=Sup3rS3cret --all-databases",
        "mysqldump --password=[REDACTED] --all-databases",
        id="flag-equals",
    ),
    pytest.param(
        "mysql -uroot -p'Sup3r S3cret' -h 127.0.0.1 shop",
        "mysql -uroot -p'[REDACTED]' -h 127.0.0.1 shop",
        id="mysql-p-quoted",
    ),
    pytest.param(
        "mysqladmin -u root -pSup3rS3cret status", "mysqladmin -u root -p[REDACTED] status", id="mysql-p-bare"
    ),
    pytest.param(
        "sshpass -p 'R00tPa55' ssh root@10.0.0.5 uptime",
        "sshpass -p '[REDACTED]' ssh root@10.0.0.5 uptime",
        id="sshpass",
    ),
    pytest.param(
        "redis-cli -h cache -a 'R3d!s-pass' ping", "redis-cli -h cache -a '[REDACTED]' ping", id="redis-cli-a"
    ),
    pytest.param(
        "ldapsearch -x -D cn=admin -w S3cret -b dc=x",
        "ldapsearch -x -D cn=admin -w [REDACTED] -b dc=x",
        id="ldapsearch-w",
    ),
    pytest.param(
        "curl -u admin:Adm1nPass https://jenkins/api/json",
        "curl -u admin:[REDACTED] https://jenkins/api/json",
        id="curl-user",
    ),
    pytest.param(
        "smbclient //fs/share -U 'corp\\bob%Winter2024'",
        "smbclient //fs/share -U 'corp\\bob%[REDACTED]'",
        id="smbclient-user",
    ),
    pytest.param(
        "openssl rsa -in key.pem -passin pass:Sup3rS3cret -out plain.pem",
        "openssl rsa -in key.pem -passin pass:[REDACTED] -out plain.pem",
        id="openssl-passin",
    ),
    pytest.param(
        "keytool -list -keystore app.jks -storepass changeit1",
        "keytool -list -keystore app.jks -storepass [REDACTED]",
        id="keytool-storepass",
    ),
    pytest.param("echo 'root:S3cret' | chpasswd", "echo 'root:[REDACTED]' | chpasswd", id="chpasswd"),
    pytest.param(
        "redis     812  0.1  redis-server *:6379 --requirepass foobared --masterauth foobared2",
        "redis     812  0.1  redis-server *:6379 --requirepass [REDACTED] --masterauth [REDACTED]",
        id="ps-output-redis-server",
    ),
    pytest.param(
        f"Cookie: JSESSIONID={HEX64[:32]}\nJSESSIONID={HEX64[:32].upper()}",
        "Cookie: JSESSIONID=[REDACTED]\nJSESSIONID=[REDACTED]",
        id="java-session-id",
    ),
    # Private keys
    pytest.param(
        f"$ cat id_rsa\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}-----END RSA PRIVATE KEY-----\n$ ",
        "$ cat id_rsa\n-----BEGIN RSA PRIVATE KEY-----\n[REDACTED]\n-----END RSA PRIVATE KEY-----\n$ ",
        id="pem-rsa",
    ),
    pytest.param(
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n"
        "-----END EC PRIVATE KEY-----",
        "-----BEGIN EC PRIVATE KEY-----\n[REDACTED]\n-----END EC PRIVATE KEY-----",
        id="pem-ec",
    ),
    pytest.param(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
        "-----END OPENSSH PRIVATE KEY-----\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n[REDACTED]\n-----END OPENSSH PRIVATE KEY-----\n",
        id="pem-openssh",
    ),
    pytest.param(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n"
        "-----END ENCRYPTED PRIVATE KEY-----",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\n[REDACTED]\n-----END ENCRYPTED PRIVATE KEY-----",
        id="pem-encrypted-pkcs8",
    ),
    pytest.param(
        f"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,5E22BB4D5C3E8C9C\n\n{PEM_BODY}"
        "-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\n[REDACTED]\n-----END RSA PRIVATE KEY-----",
        id="pem-legacy-encrypted-headers",
    ),
    pytest.param(
        "tls.key: |\n    -----BEGIN PRIVATE KEY-----\n    MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
        "    -----END PRIVATE KEY-----\n",
        "tls.key: |\n    -----BEGIN PRIVATE KEY-----\n    [REDACTED]\n    -----END PRIVATE KEY-----\n",
        id="pem-generic-in-yaml",
    ),
    pytest.param(
        f"output truncated:\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}",
        "output truncated:\n-----BEGIN RSA PRIVATE KEY-----\n[REDACTED]\n",
        id="pem-truncated",
    ),
    pytest.param(
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF5Zs7sBCAC9Xv\n=K7hF\n-----END PGP PRIVATE KEY BLOCK-----\n",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n[REDACTED]\n-----END PGP PRIVATE KEY BLOCK-----\n",
        id="pgp-private-key-block",
    ),
    pytest.param(
        "PuTTY-User-Key-File-3: ssh-ed25519\nPublic-Lines: 1\nAAAAC3NzaC1lZDI1NTE5AAAAIDx\n"
        "Private-Lines: 1\nAAAAIBkJ2KX7Yz9s0lqGxq8h\nPrivate-MAC: 4b3a\n",
        "PuTTY-User-Key-File-3: ssh-ed25519\nPublic-Lines: 1\nAAAAC3NzaC1lZDI1NTE5AAAAIDx\n"
        "Private-Lines: 1\n[REDACTED]\nPrivate-MAC: 4b3a\n",
        id="putty-private-key",
    ),
    # Legator's own credentials
    pytest.param(f"created key lgk_{HEX64} for operator", "created key [REDACTED] for operator", id="legator-api-key"),
    pytest.param(
        f'{{"probe_id": "p-1", "credential": "lpc_{MIXED36}"}}',
        '{"probe_id": "p-1", "credential": "[REDACTED]"}',
        id="legator-probe-credential-json",
    ),
    pytest.param(
        f"probe p-1 presented lpc_{MIXED36[:20]} (rejected)",
        "probe p-1 presented [REDACTED] (rejected)",
        id="legator-probe-credential-bare",
    ),
    pytest.param(
        f"curl -sSL https://cp/install.sh | sh -s -- --token lrt_{MIXED36[:24]}",
        "curl -sSL https://cp/install.sh | sh -s -- --token [REDACTED]",
        id="legator-registration-token",
    ),
]

LOOKALIKES = [
    pytest.param("probe 550e8400-e29b-41d4-a716-446655440000 registered", id="uuid"),
    pytest.param("request_id=8d3e4f5a-1b2c-4d5e-8f90-1a2b3c4d5e6f status=200", id="uuid-request-id"),
    pytest.param("commit 3f786850e387550fdab836ed7e6dc881de23001b\nAuthor: Dev <dev@example.com>", id="git-sha"),
    pytest.param(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  legator-probe.tar.gz", id="sha256sum"
    ),
    pytest.param("password_policy=strict password_min_length=12", id="password-settings"),
    pytest.param("password: ********", id="masked-password"),
    pytest.param("password= user=bob\npassword:\n", id="empty-password"),
    pytest.param('{"password": null, "token": "", "secret": true}', id="non-secret-json-values"),
    pytest.param(
        'password: "${DB_PASSWORD}"\napi_key: $API_KEY\ntoken: {{ .Values.token }}\nsecret: ${{ secrets.X }}',
        id="references-and-templates",
    ),
    pytest.param('pw = f"password={password}"; cur.execute("... password = %s", x)', id="format-placeholders"),
    pytest.param("password: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6231", id="ansible-vault"),
    pytest.param("loaded tokenizer from /models/bert; passwordless login enabled", id="tokenizer-passwordless"),
    pytest.param("keyboard layout us; the secretary filed it", id="keyboard-secretary"),
    pytest.param("GET https://api.example.com:8443/v1/probes?status=online&page=2", id="url-without-credentials"),
    pytest.param("ssh deploy@10.0.0.5 -p 2222 'systemctl status nginx'", id="ssh-target"),
    pytest.param("origin git@github.com:acme/infra.git (push)\nssh://git@gitlab.com:22/acme/app.git", id="git-remotes"),
    pytest.param("notify ops-team+alerts@example.com on failure", id="email"),
    pytest.param("I am the bearer of bad news: bearer tokens expire", id="bearer-in-prose"),
    pytest.param("curl -H 'Authorization: Bearer <token>' https://cp/api", id="bearer-placeholder"),
    pytest.param("echo SGVsbG8sIFdvcmxkIQ== | base64 -d", id="base64-plain-text"),
    pytest.param("legator v1.2.3-rc.1+build.5 (go1.22.3, python 3.11.7)", id="version-strings"),
    pytest.param(f"image: ghcr.io/acme/app@sha256:{HEX64}", id="docker-digest"),
    pytest.param(
        "secret/db-credentials-7f9c created\nsecret/sk-learn-pipeline-deployment-1 configured", id="k8s-resource-names"
    ),
    pytest.param(
        "$ kubectl get secrets -n kube-system\nNAME   TYPE   DATA   AGE\n"
        "registry-token   kubernetes.io/dockerconfigjson   1   3d",
        id="kubectl-get-secrets",
    ),
    pytest.param("secretName: tls-cert\nsecretRef:\n  name: app-env", id="k8s-secret-references"),
    pytest.param("keys starting with AKIA are long-term, ASIA are temporary", id="akia-in-prose"),
    pytest.param('{"UserId": "AIDAJQABLZS4A3QDU576Q", "Arn": "arn:aws:iam::123456789012:user/ci"}', id="aws-user-id"),
    pytest.param(f"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7{MIXED36} deploy@ci", id="ssh-public-key"),
    pytest.param(
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----\n",
        id="certificate",
    ),
    pytest.param(
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----", id="public-key"
    ),
    pytest.param("    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t", id="kubeconfig-ca-data"),
    pytest.param(f"Stripe.setPublishableKey('pk_live_{MIXED36[:24]}')", id="stripe-publishable-key"),
    pytest.param("ls -l /etc/ssl/private/\n-rw-r----- 1 root ssl-cert 1704 server.key", id="ssl-private-path"),
    pytest.param("export PATH=/usr/local/bin:/usr/bin:/bin", id="export-path"),
    pytest.param('{"model": "x", "token_count": 42, "max_tokens": 4096, "prompt_tokens": 12}', id="token-counts"),
    pytest.param('{"eos_token_id": 2, "pad_token": "<pad>", "token_type": "bearer"}', id="tokenizer-config"),
    pytest.param("2024-05-01T12:00:00.123456Z 12:00:01 [INFO] ts=1714564800 done in 0:00:03", id="timestamps"),
    pytest.param(
        "listening on [2001:db8::1]:8443 and fe80::1%eth0; http://[2001:db8::2]:8080/health", id="ipv6-addresses"
    ),
    pytest.param("PasswordAuthentication no\nPermitEmptyPasswords no", id="sshd-config"),
    pytest.param(
        "Accepted password for root from 10.0.0.1 port 22 ssh2\nPermission denied (publickey,password).",
        id="sshd-auth-log",
    ),
    pytest.param("password   required   pam_unix.so obscure sha512", id="pam-config"),
    pytest.param("admin:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", id="htpasswd-hash"),
    pytest.param("root:$6$rounds=656000$YQKkw$Pxq3.:19000:0:99999:7:::", id="shadow-hash"),
    pytest.param("mkdir -p /tmp/x && docker run -p 8080:80 nginx && ps -u root", id="short-flags-without-tools"),
    pytest.param(
        "session=3 session_timeout=30 JSESSIONID=abc auth: none auth: ldap PWD=/home/user OLDPWD=/tmp", id="weak-names"
    ),
    pytest.param("  -p, --password[=name] Password to use when connecting to server.", id="help-text"),
    pytest.param("[sudo] password for bob: \nSorry, try again.", id="sudo-prompt"),
    pytest.param("Überprüfung: Schlüssel gültig — 鍵は有効です ✓ 🙂", id="non-ascii-prose"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize(("text", "expected"), SECRETS)
def test_secrets_are_redacted_and_their_labels_kept(text: str, expected: str) -> None:
    assert sanitize(text) == expected


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_pass_through_unchanged(text: str) -> None:
    assert sanitize(text) == text


def test_the_corpus_is_as_large_as_promised() -> None:
    assert len(SECRETS) >= 45
    assert len(LOOKALIKES) >= 30


def _column(params: list[Any], index: int) -> list[str]:
    column = [param.values[index] for param in params]
    assert all(isinstance(value, str) for value in column)
    return column


@pytest.mark.parametrize("text", [pytest.param(param.values[0], id=param.id) for param in SECRETS + LOOKALIKES])
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize(text)
    assert sanitize(once) == once


def test_everything_in_one_text_is_redacted_like_each_part_alone() -> None:
    texts = _column(SECRETS + LOOKALIKES, 0)
    expected = _column(SECRETS, 1) + _column(LOOKALIKES, 0)
    assert sanitize("\n".join(texts)) == "\n".join(expected)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("password=" + "\ud800" + "x", id="lone-surrogate"),
        pytest.param("token: 🔑🔑🔑 and 鍵=1", id="emoji-value"),
        pytest.param("password=\u00a0hunter2", id="no-break-space"),
    ],
)
def test_odd_unicode_never_breaks_redaction(text: str) -> None:
    result = sanitize(text)
    assert isinstance(result, str)
    assert sanitize(result) == result


def test_a_long_secret_is_hidden_whole() -> None:
    assert sanitize("password=" + "x1" * 50_000) == "password=[REDACTED]"


MIB = 1 << 20


def _fill(unit: str) -> str:
    return (unit * (MIB // len(unit) + 1))[:MIB]


@pytest.mark.parametrize(
    ("text", "redactions"),
    [
        pytest.param(_fill("a"), 0, id="one-long-word"),
        pytest.param(_fill(" \t\n"), 0, id="whitespace"),
        pytest.param(_fill("://a:b"), 0, id="url-userinfo-without-at"),
        pytest.param(_fill("eyJaaaaaaaa."), MIB // 36, id="jwt-prefixes"),
        pytest.param("-----BEGIN RSA PRIVATE KEY-----" + _fill("----a"), 1, id="pem-dashes"),
        pytest.param(_fill("password_"), 0, id="keyword-identifier"),
        pytest.param(_fill("a=b;"), 0, id="assignments"),
        pytest.param("token: |\n" + _fill("  a\r"), 0, id="yaml-block-lone-cr"),
        pytest.param("password: " + _fill("a #"), 1, id="yaml-comments"),
        pytest.param("mysql" + _fill(" -px"), 63, id="many-flags-near-a-tool"),
        pytest.param(_fill("{a(a[a"), 0, id="unbalanced-brackets"),
    ],
)
def test_adversarial_megabyte_inputs_finish(text: str, redactions: int) -> None:
    # No timing assertion: the pytest-timeout backstop catches a catastrophic regression.
    assert sanitize(text).count(REDACTED) == redactions


# --- sanitize_mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "PASSWORD",
        "db_password",
        "DB-Password",
        "PGPASSWORD",
        "passwd",
        "pass",
        "db.pass",
        "dbPass",
        "secret",
        "client_secret",
        "clientSecret",
        "token",
        "access_token",
        "GITHUB_TOKEN",
        "api_key",
        "apikey",
        "X-Api-Key",
        "apiKey",
        "access_key",
        "aws_secret_access_key",
        "SecretAccessKey",
        "private_key",
        "privateKey",
        "credential",
        "credentials",
        "authorization",
        "Proxy-Authorization",
        "cookie",
        "Set-Cookie",
        "session",
        "session_id",
        "sessionId",
        "JSESSIONID",
        "auth",
        "_auth",
        "basicAuth",
        "MYSQL_PWD",
        "password_hash",
        "client-key-data",
        "signing_key",
        "LEGATOR_SIGNING_KEY",
        "storepass",
        "DB Password",
    ],
)
def test_secret_key_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name",
    [
        "password_min_length",
        "password_policy",
        "passwordless",
        "PasswordAuthentication",
        "token_count",
        "max_tokens",
        "tokenizer",
        "token_type",
        "secretary",
        "secret_name",
        "keyboard",
        "key",
        "monkey",
        "bypass",
        "oauth",
        "OAuth",
        "session_timeout",
        "OLDPWD",
        "private_key_id",
        "aws_access_key_id",
        "user",
        "",
    ],
)
def test_ordinary_key_names(name: str) -> None:
    assert not is_secret_key(name)


def test_secret_named_keys_lose_their_whole_value_at_any_depth() -> None:
    detail = {
        "probe": "p-1",
        "credentials": {"user": "bob", "key": "abc"},
        "nested": {"deeper": {"api_key": 12345, "Authorization": ["Bearer x"], "port": 5432}},
    }
    assert sanitize_mapping(detail) == {
        "probe": "p-1",
        "credentials": REDACTED,
        "nested": {"deeper": {"api_key": REDACTED, "Authorization": REDACTED, "port": 5432}},
    }


def test_other_strings_are_sanitized_and_other_scalars_kept() -> None:
    detail: dict[str, Any] = {
        "command": "mysql -pS3cret -e 'select 1'",
        "exit_code": 0,
        "duration": 1.5,
        "ok": True,
        "output": None,
        "raw": b"password=x",
    }
    assert sanitize_mapping(detail) == {**detail, "command": "mysql -p[REDACTED] -e 'select 1'"}


def test_lists_and_tuples_of_mappings_are_walked() -> None:
    detail: dict[str, Any] = {
        "env": [{"name": "A", "password": "x"}, "token=abc123", 7],
        "pair": ("Authorization: Basic dXNlcjpwYXNz", {"secret": "s"}),
    }
    assert sanitize_mapping(detail) == {
        "env": [{"name": "A", "password": REDACTED}, "token=[REDACTED]", 7],
        "pair": ("Authorization: Basic [REDACTED]", {"secret": REDACTED}),
    }


def test_values_that_hold_no_secret_are_kept_under_secret_names() -> None:
    detail = {"password": None, "token": "", "has_password": True, "secret": False}
    assert sanitize_mapping(detail) == detail


def test_sanitize_mapping_does_not_mutate_its_input() -> None:
    detail: dict[str, Any] = {
        "password": "x",
        "items": [{"token": "t", "note": "password=y"}],
        "meta": {"cookie": "a=b", "tags": ("x", "api_key=z")},
    }
    before = copy.deepcopy(detail)
    result = sanitize_mapping(detail)
    assert detail == before
    assert result["items"] is not detail["items"]
    assert result["meta"] is not detail["meta"]


def test_non_string_keys_are_left_alone() -> None:
    detail: dict[Any, Any] = {1: "token=abc123", ("password",): "x"}
    assert sanitize_mapping(detail) == {1: "token=[REDACTED]", ("password",): "x"}


# --- rule internals that the corpus does not reach --------------------------------------------------------


def test_command_context_is_looked_for_on_the_same_line_only() -> None:
    assert sanitize("mysql -h db\nls -pX") == "mysql -h db\nls -pX"
    assert sanitize("ls\nmysql -pX\nls") == "ls\nmysql -p[REDACTED]\nls"
    far = "mysql" + " " * 300 + "-pX"
    assert sanitize(far) == far


def test_every_rule_names_the_part_it_hides() -> None:
    for rule in sanitize_module._RULES:
        assert any(name == "v" or name[1:].isdigit() for name in rule.pattern.groupindex if name.startswith("v"))
