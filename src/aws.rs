//! AWS credentials: the SDK's credential chain, asked again whenever what it
//! gave is about to expire — never a one-time copy of temporary keys.
//!
//! One chain serves everything AWS in a run: the Glue client (the SDK's own
//! identity cache refreshes it), S3 data files and RDS/Aurora IAM
//! authentication (a token signed from the chain for every new Postgres
//! connection, [`rds_auth_token`]).  For the last two the chain's answer is
//! held by [`CachedCredentials`] until half its lifetime is left (see
//! [`renew_at`]): iceberg-rust builds a new OpenDAL operator, and so a
//! signer with an empty cache, for every file it reads or writes, and the
//! chain itself caches nothing — without the hold every S3 request would
//! ask STS, instance metadata or a `credential_process` again.  The chain is the
//! SDK's default: static keys when the config names them, else environment,
//! profile (`credential_process`, SSO, `role_arn`), web identity (IRSA), ECS
//! and instance metadata.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use iceberg_storage_opendal::{AwsCredential, CustomAwsCredentialLoader, ProvideCredential};

use crate::error::{Error, ErrorKind, Result};

/// Where the chain comes from: every field optional, the SDK's defaults
/// fill the rest.
#[derive(Default)]
pub struct ChainSettings<'a> {
    pub region: Option<&'a str>,
    pub profile: Option<&'a str>,
    /// Static keys `(access key id, secret, session token)` from the config.
    pub static_keys: Option<(&'a str, &'a str, Option<&'a str>)>,
    /// An endpoint other than AWS's (tests, VPC endpoints).
    pub endpoint: Option<&'a str>,
}

/// The SDK configuration (region, credential chain, endpoint) of `s`.
pub async fn sdk_config(s: &ChainSettings<'_>) -> SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = s.region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    if let Some(profile) = s.profile {
        loader = loader.profile_name(profile);
    }
    if let Some((key, secret, token)) = s.static_keys {
        loader = loader.credentials_provider(Credentials::new(
            key,
            secret,
            token.map(str::to_string),
            None,
            "permafrost-config",
        ));
    }
    if let Some(uri) = s.endpoint {
        loader = loader.endpoint_url(uri);
    }
    loader.load().await
}

/// The chain as OpenDAL's S3 credential source: S3 requests are signed with
/// the chain's current keys, held as [`CachedCredentials`] says.  Also
/// remembered as this process's S3 chain ([`s3_chain`]), for the storage
/// listings iceberg-rust cannot make.
pub fn s3_credentials(provider: SharedCredentialsProvider) -> CustomAwsCredentialLoader {
    s3_loader(CachedCredentials::new(Some(provider)))
}

/// [`s3_credentials`] of the SDK's default chain (in `region`, for its STS
/// calls), built when S3 first asks for keys: a catalog whose tables carry
/// keys of their own never resolves a region or reads a profile for it.
pub fn s3_credentials_when_asked(region: Option<String>) -> CustomAwsCredentialLoader {
    s3_loader(CachedCredentials {
        provider: tokio::sync::OnceCell::new(),
        region,
        held: tokio::sync::Mutex::new(None),
    })
}

fn s3_loader(cache: CachedCredentials) -> CustomAwsCredentialLoader {
    let cache = Arc::new(cache);
    let _ = S3_CHAIN.set(cache.clone());
    CustomAwsCredentialLoader::new(ChainCredentials(cache))
}

/// The chain S3 data files are signed with when the catalog gives no static
/// keys (set once, by the catalog handle of the run).
static S3_CHAIN: std::sync::OnceLock<Arc<CachedCredentials>> = std::sync::OnceLock::new();

/// [`s3_credentials`]' chain for an OpenDAL operator of our own (listing
/// orphan files), if the run's catalog signs S3 with the SDK chain.
pub fn s3_chain() -> Option<reqsign_core::ProvideCredentialChain<AwsCredential>> {
    let cache = S3_CHAIN.get()?.clone();
    Some(reqsign_core::ProvideCredentialChain::new().push(ChainCredentials(cache)))
}

/// Adapts the held chain to reqsign's credential source (OpenDAL's signer).
struct ChainCredentials(Arc<CachedCredentials>);

impl fmt::Debug for ChainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainCredentials")
    }
}

impl ProvideCredential for ChainCredentials {
    type Credential = AwsCredential;

    async fn provide_credential(
        &self,
        _ctx: &reqsign_core::Context,
    ) -> reqsign_core::Result<Option<AwsCredential>> {
        let c = self
            .0
            .get()
            .await
            .map_err(|e| reqsign_core::Error::credential_invalid(e.message().to_string()))?;
        let expires_in = match c.expiry() {
            Some(t) => Some(timestamp(t)?),
            None => None,
        };
        Ok(Some(AwsCredential {
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: c.session_token().map(str::to_string),
            expires_in,
        }))
    }
}

fn timestamp(t: SystemTime) -> reqsign_core::Result<reqsign_core::time::Timestamp> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    reqsign_core::time::Timestamp::from_second(secs)
}

/// How long an RDS IAM token is valid (AWS's fixed 15 minutes): it is only
/// checked when a connection logs in, so a connection outlives it.
const RDS_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// The RDS/Aurora IAM authentication token for `user` at `host:port`, signed
/// at `at` — the password of one new connection.  Same as the AWS SDKs'
/// generators (`generate_db_auth_token`): a SigV4 presigned
/// `GET https://host:port/?Action=connect&DBUser=user` for the service
/// `rds-db`, without its scheme.
pub fn rds_auth_token(
    credentials: Credentials,
    region: &str,
    host: &str,
    port: u16,
    user: &str,
    at: SystemTime,
) -> Result<String> {
    use aws_sigv4::http_request::{
        SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
    };
    let fail = |e: &dyn fmt::Display| {
        Error::new(
            ErrorKind::Config,
            format!("cannot sign the RDS IAM token: {e}"),
        )
    };
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(RDS_TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let base = format!("https://{host}:{port}/");
    let mut url = url::Url::parse(&base).map_err(|e| fail(&e))?;
    url.query_pairs_mut()
        .append_pair("Action", "connect")
        .append_pair("DBUser", user);
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| fail(&e))?;
    let (instructions, _) = sign(request, &params).map_err(|e| fail(&e))?.into_parts();
    // The signature last, as boto3 and the CLI write it (the order does
    // not change what it signs).
    let mut params = instructions.params().to_vec();
    params.sort_by_key(|(name, _)| *name == "X-Amz-Signature");
    for (name, value) in params {
        url.query_pairs_mut().append_pair(name, &value);
    }
    Ok(url.as_str()["https://".len()..].to_string())
}

/// Signs HTTP requests to one AWS service with the credential chain's
/// current keys (SigV4, in headers) — the requests of a REST catalog that
/// needs them ([`crate::lake::rest_signer`]).  Keys are held as
/// [`CachedCredentials`] says, so a `credential_process` or STS is asked
/// again only when they near their expiry.
pub struct RequestSigner {
    keys: CachedCredentials,
    region: String,
    service: String,
}

impl RequestSigner {
    /// A signer for `service` with the keys of `chain` (the SDK's chain
    /// where it names nothing), in its region (else the chain's), whose
    /// first keys are fetched now: a chain that gives none, or no region,
    /// fails here in one line rather than on the first request.
    pub async fn new(chain: &ChainSettings<'_>, service: &str) -> Result<Self> {
        let sdk = sdk_config(chain).await;
        let region = chain
            .region
            .map(str::to_string)
            .or_else(|| sdk.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                Error::config("`catalog.rest.sigv4-enabled` needs the region to sign for")
                    .with_hint(
                        "set `catalog.rest.signing-region` (the catalog's region) or AWS_REGION",
                    )
            })?;
        let signer = Self {
            keys: CachedCredentials::new(sdk.credentials_provider()),
            region,
            service: service.to_string(),
        };
        signer.keys.get().await?;
        Ok(signer)
    }

    /// The headers (`authorization`, `x-amz-date`, and with temporary keys
    /// `x-amz-security-token`) that sign `method url` carrying `headers`
    /// and `body`, now.
    pub async fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>> {
        let keys = self.keys.get().await?;
        let request = Request {
            method,
            url,
            headers,
            body,
        };
        signature_headers(
            keys,
            &self.region,
            &self.service,
            &request,
            crate::fault::signing_clock(),
        )
    }
}

/// An HTTP request as SigV4 signs it.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// The SigV4 headers signing `request` for `service` in `region` with
/// `credentials` at `at` — the AWS SDKs' signer with its default settings
/// (every header given is signed but `user-agent`; `host` from the URL;
/// the body's SHA-256; the path encoded twice, as every service but S3
/// wants it).
pub fn signature_headers(
    credentials: Credentials,
    region: &str,
    service: &str,
    request: &Request<'_>,
    at: SystemTime,
) -> Result<Vec<(String, String)>> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let fail = |e: &dyn fmt::Display| {
        Error::new(
            ErrorKind::Catalog,
            format!("cannot sign the catalog request: {e}"),
        )
    };
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url,
        request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| fail(&e))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The database's credential chain, loaded once per process and cached
/// until five minutes before its credentials expire.
static DATABASE_CHAIN: tokio::sync::OnceCell<(SdkConfig, CachedCredentials)> =
    tokio::sync::OnceCell::const_new();

/// The IAM token for one new connection as `user` to `host:port` (RDS/Aurora
/// IAM authentication), signed from the AWS credential chain for `region`
/// (else the chain's own region).  Tokens are not reused: each connection
/// gets its own, so a run may last longer than a token's 15 minutes.
pub async fn rds_token_for(
    region: Option<&str>,
    host: &str,
    port: u16,
    user: &str,
) -> Result<String> {
    let (sdk, cache) = DATABASE_CHAIN
        .get_or_init(|| async {
            let sdk = sdk_config(&ChainSettings {
                region,
                ..ChainSettings::default()
            })
            .await;
            let cache = CachedCredentials::new(sdk.credentials_provider());
            (sdk, cache)
        })
        .await;
    let region = region
        .map(str::to_string)
        .or_else(|| sdk.region().map(|r| r.to_string()))
        .ok_or_else(|| {
            Error::config("`database.iam_auth` needs a region to sign the token for")
                .with_hint("set `database.iam_region` (the database's region) or AWS_REGION")
        })?;
    let credentials = cache.get().await?;
    let token = rds_auth_token(
        credentials,
        &region,
        host,
        port,
        user,
        crate::fault::signing_clock(),
    )?;
    crate::secret::register(token.clone());
    tracing::debug!("signed an RDS IAM token for {user}@{host}:{port} ({region})");
    Ok(token)
}

/// Credentials from a provider, held until [`renew_at`] and then asked for
/// again (keys without an expiry are held for the run).
struct CachedCredentials {
    /// The provider; unset until first asked when built from `region`.
    provider: tokio::sync::OnceCell<Option<SharedCredentialsProvider>>,
    region: Option<String>,
    held: tokio::sync::Mutex<Option<(Credentials, Option<SystemTime>)>>,
}

impl CachedCredentials {
    fn new(provider: Option<SharedCredentialsProvider>) -> Self {
        Self {
            provider: tokio::sync::OnceCell::new_with(Some(provider)),
            region: None,
            held: tokio::sync::Mutex::new(None),
        }
    }

    async fn provider(&self) -> Option<&SharedCredentialsProvider> {
        let region = self.region.as_deref();
        let settings = ChainSettings {
            region,
            ..Default::default()
        };
        self.provider
            .get_or_init(|| async { sdk_config(&settings).await.credentials_provider() })
            .await
            .as_ref()
    }

    async fn get(&self) -> Result<Credentials> {
        let mut held = self.held.lock().await;
        let now = SystemTime::now();
        if let Some((c, renew)) = held.as_ref()
            && renew.is_none_or(|r| now < r)
        {
            return Ok(c.clone());
        }
        let provider = self.provider().await.ok_or_else(|| {
            Error::config("no AWS credential chain is configured").with_hint(CHAIN_HINT)
        })?;
        let c = current_credentials(provider).await?;
        *held = Some((
            c.clone(),
            c.expiry().map(|e| renew_at(now, e, SIGNER_LEAST_LEFT)),
        ));
        Ok(c)
    }
}

/// When keys fetched at `fetched` and expiring at `expiry` are asked for
/// again: once half their lifetime is left, but at most five minutes and at
/// least `least_left` before they expire.  For the chain's keys that is
/// [`SIGNER_LEAST_LEFT`]: an hour's STS keys are renewed after 55 minutes,
/// 15 minutes' after 10, two minutes' after one; keys that live 20 s or less
/// at every request.  Keys a catalog vends with a table follow the same
/// rule ([`crate::lake::vended`]).
pub fn renew_at(fetched: SystemTime, expiry: SystemTime, least_left: Duration) -> SystemTime {
    let life = expiry.duration_since(fetched).unwrap_or_default();
    let left = (life / 2).clamp(least_left, Duration::from_secs(300).max(least_left));
    expiry.checked_sub(left).unwrap_or(fetched)
}

/// What the chain's keys keep in reserve: OpenDAL's signer (reqsign)
/// refuses keys with less than 10 s left.
const SIGNER_LEAST_LEFT: Duration = Duration::from_secs(20);

const CHAIN_HINT: &str = "set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a web \
                          identity token (IRSA), or run where instance metadata answers";

/// Credentials from `provider` now, as one error line naming the chain.
async fn current_credentials(provider: &SharedCredentialsProvider) -> Result<Credentials> {
    provider.provide_credentials().await.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!(
                "the AWS credential chain gave no credentials: {}",
                crate::error::flatten_source(&e)
            ),
        )
        .with_hint(CHAIN_HINT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_renewed_with_half_their_life_or_five_minutes_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(renew_at(t0, at(3600), SIGNER_LEAST_LEFT), at(3300));
        assert_eq!(renew_at(t0, at(900), SIGNER_LEAST_LEFT), at(600));
        assert_eq!(renew_at(t0, at(120), SIGNER_LEAST_LEFT), at(60));
        // 20 s are always left; keys living less are asked for again at once.
        assert_eq!(renew_at(t0, at(30), SIGNER_LEAST_LEFT), at(10));
        assert!(renew_at(t0, at(12), SIGNER_LEAST_LEFT) <= t0);
        assert!(renew_at(at(10), at(5), SIGNER_LEAST_LEFT) <= at(10));
    }

    /// The signatures botocore's SigV4Auth (PyIceberg's REST signer) gives
    /// for these requests to S3 Tables: a POST with a body, and a GET with
    /// temporary keys and the empty body's hash — the table bucket's ARN in
    /// the path, percent-encoded (so encoded twice in the canonical request).
    #[test]
    fn catalog_request_signatures_equal_botocore() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let url = "https://s3tables.us-east-1.amazonaws.com/iceberg/v1/\
                   arn%3Aaws%3As3tables%3Aus-east-1%3A111122223333%3Abucket%2Farchive/namespaces?pageSize=10";
        let json = vec![("content-type".to_string(), "application/json".to_string())];
        let sign = |method, headers: &[(String, String)], body: &[u8], token: Option<&str>| {
            let keys = Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                token.map(str::to_string),
                None,
                "test",
            );
            let request = Request {
                method,
                url,
                headers,
                body,
            };
            let out =
                signature_headers(keys, "us-east-1", "s3tables", &request, at).expect("signed");
            out.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let post = sign("POST", &json, br#"{"namespace":["archive"]}"#, None);
        assert_eq!(post["x-amz-date"], "20231114T221320Z");
        assert_eq!(
            post["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/s3tables/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=51505ce527694ef807ed38537b69d2be928e0da7ca5ab19d4d33475c676323f0"
        );
        let mut headers = json.clone();
        headers.push((
            "x-amz-content-sha256".into(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        ));
        let get = sign("GET", &headers, b"", Some("session-token-1"));
        assert_eq!(get["x-amz-security-token"], "session-token-1");
        assert_eq!(
            get["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/s3tables/aws4_request, \
             SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, \
             Signature=d4852f20d1126d21661d8d0dd43f970154af2a482fdc42e56559d07bff8c8d7b"
        );
    }

    /// The token boto3's `generate_db_auth_token` gives for these inputs
    /// (`tests/py/rds_token.py`); the integration test compares live too.
    #[test]
    fn rds_token_equals_the_sdk_generator() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token =
            rds_auth_token(creds, "eu-west-1", "localhost", 5432, "app", at).expect("token");
        assert_eq!(
            token,
            "localhost:5432/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20231114T221320Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=0e99c9b414d41a3e636e0f692ca6ed2f1424e81176796aed22fe9d2e99f70c76"
        );
    }
}
