//! Who this host is: instance ID, availability zone and region.
//!
//! `ebs.instanceID` / `ebs.availabilityZone` (env `EBS_INSTANCEID`, `EBS_AVAILABILITYZONE`)
//! override instance metadata. Otherwise [`Imds`] asks the instance metadata service with
//! IMDSv2 (a `PUT /latest/api/token` first, then GETs carrying the token), at
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` or `http://169.254.169.254`. The backend resolves the
//! identity once, on the first call that needs it (never before the socket listens), and keeps
//! it; a failure is retried on the next call.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::settings::EbsSettings;

/// The default metadata endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// How long a token is asked for (6 h, the maximum).
const TOKEN_TTL_SECS: u64 = 21_600;

/// Per-request timeout (IMDS answers in milliseconds; a host off EC2 never answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// This host's identity in EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `i-…`.
    pub instance_id: String,
    /// `us-east-1a`.
    pub availability_zone: String,
    /// `us-east-1`.
    pub region: String,
}

/// What configuration and metadata say, before the EC2 client exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The instance.
    pub instance_id: String,
    /// The AZ, unless only the instance ID was configured (then DescribeInstances tells).
    pub availability_zone: Option<String>,
    /// The region EC2 calls go to.
    pub region: String,
}

/// Reads instance metadata paths (relative to `/latest/meta-data/`).
#[async_trait]
pub trait Metadata: Send + Sync + fmt::Debug {
    /// The value at `path`, e.g. `instance-id`.
    ///
    /// # Errors
    /// A message saying what failed.
    async fn get(&self, path: &str) -> Result<String, String>;
}

/// The region of an AZ: `us-east-1a` → `us-east-1` (a Local Zone needs `ebs.region`).
pub fn region_of(az: &str) -> Option<String> {
    let region = az.trim_end_matches(|c: char| c.is_ascii_lowercase());
    (region.len() < az.len() && region.ends_with(|c: char| c.is_ascii_digit())).then(|| region.to_owned())
}

/// Combines the settings and (when they leave gaps) metadata.
///
/// - Both `ebs.instanceID` and `ebs.availabilityZone` set: no metadata call.
/// - Only `ebs.instanceID`: the AZ comes from DescribeInstances later.
/// - Otherwise the gaps are filled from metadata; then metadata's region wins over `ebs.region`
///   (as in REX-Ray: the instance knows where it is).
///
/// # Errors
/// What could not be found out, with the settings that would avoid it.
pub async fn discover(settings: &EbsSettings, metadata: &dyn Metadata) -> Result<Discovered, String> {
    let hint = "set ebs.instanceID and ebs.availabilityZone (EBS_INSTANCEID, EBS_AVAILABILITYZONE) when instance metadata is not reachable";
    let from_metadata = settings.instance_id.is_none();
    let instance_id = match &settings.instance_id {
        Some(id) => id.clone(),
        None => metadata.get("instance-id").await.map_err(|e| format!("read the instance ID: {e}; {hint}"))?,
    };
    let availability_zone = match (&settings.availability_zone, from_metadata) {
        (Some(az), _) => Some(az.clone()),
        (None, true) => Some(
            metadata
                .get("placement/availability-zone")
                .await
                .map_err(|e| format!("read the availability zone: {e}; {hint}"))?,
        ),
        (None, false) => None,
    };
    let metadata_region = if from_metadata {
        match metadata.get("placement/region").await {
            Ok(r) => Some(r),
            Err(_) => availability_zone.as_deref().and_then(region_of),
        }
    } else {
        None
    };
    if let (Some(md), Some(cfg)) = (&metadata_region, &settings.region) {
        if md != cfg {
            tracing::warn!(metadata = %md, configured = %cfg, "ebs.region differs from the instance's region; using the instance's");
        }
    }
    let region = metadata_region
        .or_else(|| settings.region.clone())
        .or_else(|| availability_zone.as_deref().and_then(region_of))
        .ok_or_else(|| "cannot tell the region: set ebs.region (EBS_REGION) or ebs.availabilityZone".to_owned())?;
    Ok(Discovered { instance_id, availability_zone, region })
}

/// An IMDSv2 client.
#[derive(Debug)]
pub struct Imds {
    /// `http://host[:port]`.
    endpoint: String,
    /// `AWS_EC2_METADATA_DISABLED=true`.
    disabled: bool,
    /// The token and when it stops being used.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl Imds {
    /// A client for `endpoint` (no request is made until [`Metadata::get`]).
    pub fn new(endpoint: &str, disabled: bool) -> Self {
        Self { endpoint: endpoint.trim_end_matches('/').to_owned(), disabled, token: tokio::sync::Mutex::new(None) }
    }

    /// A client configured from `AWS_EC2_METADATA_SERVICE_ENDPOINT` and
    /// `AWS_EC2_METADATA_DISABLED` in `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let endpoint = env("AWS_EC2_METADATA_SERVICE_ENDPOINT").filter(|e| !e.is_empty());
        let disabled = env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Self::new(endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT), disabled)
    }

    async fn request(&self, method: Method, path: &str, header: (&str, &str)) -> Result<(StatusCode, String), String> {
        let uri: Uri =
            format!("{}{path}", self.endpoint).parse().map_err(|e| format!("bad endpoint {}: {e}", self.endpoint))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("metadata endpoint {} must be http://", self.endpoint));
        }
        let host =
            uri.host().ok_or_else(|| format!("no host in {}", self.endpoint))?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri.authority().map(ToString::to_string).unwrap_or_default();
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let request = Request::builder()
                .method(method)
                .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
                .header("Host", authority)
                .header(header.0, header.1)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).trim().to_owned()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                format!("no answer from {} within {}", self.endpoint, crate::human::duration(REQUEST_TIMEOUT))
            })?
            .map_err(|e| format!("{}: {e}", self.endpoint))
    }

    async fn token(&self, refresh: bool) -> Result<String, String> {
        let mut slot = self.token.lock().await;
        if let Some((token, until)) = slot.as_ref() {
            if !refresh && Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let ttl = TOKEN_TTL_SECS.to_string();
        let (status, body) =
            self.request(Method::PUT, "/latest/api/token", ("X-aws-ec2-metadata-token-ttl-seconds", &ttl)).await?;
        if status != StatusCode::OK || body.is_empty() {
            return Err(format!("IMDSv2 token request answered {status}"));
        }
        // Renew a minute early.
        *slot = Some((body.clone(), Instant::now() + Duration::from_secs(TOKEN_TTL_SECS - 60)));
        Ok(body)
    }
}

#[async_trait]
impl Metadata for Imds {
    async fn get(&self, path: &str) -> Result<String, String> {
        if self.disabled {
            return Err("instance metadata is disabled (AWS_EC2_METADATA_DISABLED=true)".into());
        }
        let full = format!("/latest/meta-data/{path}");
        let mut refresh = false;
        for _ in 0..2 {
            let token = self.token(refresh).await?;
            let (status, body) = self.request(Method::GET, &full, ("X-aws-ec2-metadata-token", &token)).await?;
            match status {
                StatusCode::OK if !body.is_empty() => return Ok(body),
                StatusCode::UNAUTHORIZED => refresh = true,
                other => return Err(format!("GET {full} answered {other}")),
            }
        }
        Err(format!("GET {full}: the metadata service keeps refusing a fresh token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug, Default)]
    struct Static(BTreeMap<&'static str, &'static str>, Mutex<Vec<String>>);

    #[async_trait]
    impl Metadata for Static {
        async fn get(&self, path: &str) -> Result<String, String> {
            self.1.lock().unwrap().push(path.to_owned());
            self.0.get(path).map(|v| (*v).to_owned()).ok_or_else(|| "404".to_owned())
        }
    }

    fn md() -> Static {
        Static(
            BTreeMap::from([
                ("instance-id", "i-0meta"),
                ("placement/availability-zone", "eu-west-1b"),
                ("placement/region", "eu-west-1"),
            ]),
            Mutex::default(),
        )
    }

    #[test]
    fn region_from_az() {
        assert_eq!(region_of("us-east-1a").as_deref(), Some("us-east-1"));
        assert_eq!(region_of("ap-southeast-2c").as_deref(), Some("ap-southeast-2"));
        assert_eq!(region_of("nonsense"), None);
    }

    #[tokio::test]
    async fn overrides_skip_metadata() {
        let m = md();
        let s = EbsSettings {
            instance_id: Some("i-1".into()),
            availability_zone: Some("us-east-1c".into()),
            ..EbsSettings::default()
        };
        let d = discover(&s, &m).await.unwrap();
        assert_eq!(
            d,
            Discovered {
                instance_id: "i-1".into(),
                availability_zone: Some("us-east-1c".into()),
                region: "us-east-1".into()
            }
        );
        assert!(m.1.lock().unwrap().is_empty(), "no metadata call");
        // Only the instance: the AZ is left to DescribeInstances; the region comes from config.
        let s =
            EbsSettings { instance_id: Some("i-1".into()), region: Some("us-west-2".into()), ..EbsSettings::default() };
        let d = discover(&s, &m).await.unwrap();
        assert_eq!((d.availability_zone, d.region.as_str()), (None, "us-west-2"));
        assert!(m.1.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn metadata_fills_gaps_and_its_region_wins() {
        let m = md();
        let s = EbsSettings { region: Some("us-east-1".into()), ..EbsSettings::default() };
        let d = discover(&s, &m).await.unwrap();
        assert_eq!(
            d,
            Discovered {
                instance_id: "i-0meta".into(),
                availability_zone: Some("eu-west-1b".into()),
                region: "eu-west-1".into()
            }
        );
        let err = discover(&EbsSettings::default(), &Static::default()).await.unwrap_err();
        assert!(err.contains("instance ID") && err.contains("ebs.instanceID"), "{err}");
    }

    /// A tiny IMDSv2 server: refuses GETs without the token it handed out.
    async fn fake_imds(requests: Arc<Mutex<Vec<String>>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let first = text.lines().next().unwrap_or("").to_owned();
                    requests.lock().unwrap().push(first.clone());
                    let lower = text.to_ascii_lowercase();
                    let (status, body) = if first.starts_with("PUT /latest/api/token") {
                        if lower.contains("x-aws-ec2-metadata-token-ttl-seconds: 21600") {
                            ("200 OK", "tok-1")
                        } else {
                            ("400 Bad Request", "")
                        }
                    } else if !lower.contains("x-aws-ec2-metadata-token: tok-1") {
                        ("401 Unauthorized", "")
                    } else if first.starts_with("GET /latest/meta-data/instance-id ") {
                        ("200 OK", "i-0fromimds")
                    } else if first.starts_with("GET /latest/meta-data/placement/availability-zone ") {
                        ("200 OK", "us-west-2b")
                    } else {
                        ("404 Not Found", "")
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn imdsv2_puts_a_token_first_and_caches_it() {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let endpoint = fake_imds(requests.clone()).await;
        let env = |k: &str| (k == "AWS_EC2_METADATA_SERVICE_ENDPOINT").then(|| endpoint.clone());
        let imds = Imds::from_env(&env);
        let d = discover(&EbsSettings::default(), &imds).await.unwrap();
        assert_eq!(
            d,
            Discovered {
                instance_id: "i-0fromimds".into(),
                availability_zone: Some("us-west-2b".into()),
                region: "us-west-2".into()
            }
        );
        let seen = requests.lock().unwrap().clone();
        assert!(seen[0].starts_with("PUT /latest/api/token"), "{seen:?}");
        assert_eq!(seen.iter().filter(|r| r.starts_with("PUT")).count(), 1, "{seen:?}");
        assert!(seen.iter().any(|r| r.starts_with("GET /latest/meta-data/placement/region")), "{seen:?}");
    }

    #[tokio::test]
    async fn disabled_or_unreachable_metadata_is_a_clear_error() {
        let imds = Imds::from_env(&|k| (k == "AWS_EC2_METADATA_DISABLED").then(|| "true".to_owned()));
        assert!(imds.get("instance-id").await.unwrap_err().contains("disabled"));
        // A closed port: connection refused, fast.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let imds = Imds::new(&format!("http://127.0.0.1:{port}"), false);
        let err = imds.get("instance-id").await.unwrap_err();
        assert!(err.contains("127.0.0.1"), "{err}");
    }
}
