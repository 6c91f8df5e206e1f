//! A DICOMweb client (PS3.18): QIDO-RS to find instances, WADO-RS to retrieve them,
//! STOW-RS to store. Blocking (`ureq`, rustls): the callers are a command-line sync and a
//! server's blocking threads.
//!
//! Credentials come from a file or the environment, never from a flag; they are sent in
//! the `Authorization` header and appear in no log line, error or `Debug` output. A URL
//! with credentials in it is refused.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::error::{PacsError, Result};

/// HTTP authentication for the PACS.
#[derive(Clone)]
pub enum Auth {
    Basic { user: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { user, .. } => write!(f, "Basic({user}, <password>)"),
            Auth::Bearer(_) => write!(f, "Bearer(<token>)"),
        }
    }
}

/// The environment variable that may hold the credentials instead of a file.
pub const AUTH_ENV: &str = "MEDRET_PACS_AUTH";

impl Auth {
    /// Parses `user:password` or `Bearer TOKEN` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> std::result::Result<Auth, String> {
        let t = text.trim();
        if let Some(token) = t.strip_prefix("Bearer ") {
            let token = token.trim();
            if token.is_empty() {
                return Err("`Bearer` without a token".into());
            }
            return Ok(Auth::Bearer(token.to_string()));
        }
        match t.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Auth::Basic {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err("expected `user:password` or `Bearer TOKEN`".into()),
        }
    }

    /// Reads the credentials from `file`, else from [`AUTH_ENV`]; `None` when neither is
    /// given. The message of a bad file never quotes its content.
    pub fn load(file: Option<&Path>) -> Result<Option<Auth>> {
        if let Some(p) = file {
            let text = std::fs::read_to_string(p).map_err(|e| PacsError::File {
                path: p.display().to_string(),
                message: format!("cannot read the credentials: {e}"),
            })?;
            return Auth::parse(&text).map(Some).map_err(|m| PacsError::File {
                path: p.display().to_string(),
                message: m,
            });
        }
        match std::env::var(AUTH_ENV) {
            Ok(text) if !text.trim().is_empty() => Auth::parse(&text)
                .map(Some)
                .map_err(|m| PacsError::Config(format!("{AUTH_ENV}: {m}"))),
            _ => Ok(None),
        }
    }

    fn header(&self) -> String {
        match self {
            Auth::Basic { user, password } => {
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                )
            }
            Auth::Bearer(t) => format!("Bearer {t}"),
        }
    }
}

/// One instance as QIDO-RS lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Instance {
    pub study: String,
    pub series: String,
    pub sop: String,
    pub sop_class: String,
    pub modality: String,
    /// `YYYYMMDD`, or empty.
    pub study_date: String,
    /// Rows (0028,0010): absent for objects without pixels (reports, key objects).
    pub rows: Option<u32>,
}

/// How long one request may take, and how often a failed one is retried.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub request: Duration,
    /// Retries after a 5xx answer or a transport error, with back-off (0.5 s, 1 s, 2 s...).
    pub retries: u32,
    /// The largest response body read (an instance, or a QIDO page).
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(120),
            retries: 3,
            max_body: 1 << 30,
        }
    }
}

/// A DICOMweb service at `base` (for Orthanc, `http://host:8042/dicom-web`).
pub struct DicomWeb {
    base: String,
    agent: ureq::Agent,
    auth: Option<Auth>,
    limits: Limits,
}

impl std::fmt::Debug for DicomWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomWeb")
            .field("base", &self.base)
            .field("auth", &self.auth)
            .finish()
    }
}

/// QIDO-RS results per request.
const PAGE: usize = 500;

impl DicomWeb {
    /// A client for `base`. HTTPS trusts the public (Mozilla) roots, or, with `ca_file`,
    /// exactly the PEM bundle given (a hospital's own CA).
    pub fn new(
        base: &str,
        auth: Option<Auth>,
        ca_file: Option<&Path>,
        limits: Limits,
    ) -> Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .ok_or_else(|| {
                PacsError::Config(format!(
                    "{base}: the PACS URL must start with http:// or https://"
                ))
            })?;
        if rest
            .split('/')
            .next()
            .is_some_and(|host| host.contains('@'))
        {
            return Err(PacsError::Config(
                "the PACS URL holds credentials: put them in the auth file (or MEDRET_PACS_AUTH), never in a URL".into(),
            ));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| PacsError::File {
                path: ca.display().to_string(),
                message: format!("cannot read the CA bundle: {e}"),
            })?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(PacsError::File {
                    path: ca.display().to_string(),
                    message: "no PEM certificate in the CA bundle".into(),
                });
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(limits.connect))
            .timeout_global(Some(limits.request))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(DicomWeb {
            base,
            agent,
            auth,
            limits,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request built by `make`, retrying 5xx answers and transport errors with
    /// back-off; 401 and 403 are an error at once. Returns the status and the body.
    fn call(
        &self,
        url: &str,
        make: &dyn Fn(
            &ureq::Agent,
        )
            -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Option<String>, Vec<u8>)> {
        let mut attempt = 0;
        loop {
            let outcome = make(&self.agent);
            let retry = match outcome {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if status == 401 || status == 403 {
                        return Err(PacsError::Unauthorized {
                            url: url.to_string(),
                            status,
                        });
                    }
                    if status < 500 {
                        let ctype = resp
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let body = resp
                            .body_mut()
                            .with_config()
                            .limit(self.limits.max_body)
                            .read_to_vec()
                            .map_err(|e| PacsError::Unreachable {
                                url: url.to_string(),
                                message: format!("reading the answer: {e}"),
                            })?;
                        return Ok((status, ctype, body));
                    }
                    PacsError::Http {
                        url: url.to_string(),
                        status,
                        message: "the PACS failed".into(),
                    }
                }
                Err(e) => PacsError::Unreachable {
                    url: url.to_string(),
                    message: e.to_string(),
                },
            };
            if attempt >= self.limits.retries {
                return Err(retry);
            }
            let wait = Duration::from_millis(500 << attempt);
            tracing::warn!(attempt = attempt + 1, wait_ms = wait.as_millis() as u64, error = %retry, "PACS request failed; retrying");
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn get(&self, url: &str, accept: &str) -> Result<(u16, Option<String>, Vec<u8>)> {
        self.call(url, &|agent| {
            let mut req = agent.get(url).header("Accept", accept);
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a.header());
            }
            req.call()
        })
    }

    /// QIDO-RS `GET {base}/instances` (or `{base}/studies/{study}/instances`) with the
    /// given matching keys, every page of it.
    pub fn find_instances(
        &self,
        study: Option<&str>,
        keys: &[(String, String)],
    ) -> Result<Vec<Instance>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut received = 0usize;
        let root = match study {
            Some(s) => format!("{}/studies/{}/instances", self.base, encode(s)),
            None => format!("{}/instances", self.base),
        };
        loop {
            let mut query: Vec<String> = keys
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            for field in [
                "00080016", "00080060", "00080020", "0020000D", "0020000E", "00280010",
            ] {
                query.push(format!("includefield={field}"));
            }
            query.push(format!("limit={PAGE}"));
            query.push(format!("offset={received}"));
            let url = format!("{root}?{}", query.join("&"));
            let (status, _, body) = self.get(&url, "application/dicom+json")?;
            let shown = format!("{root} (QIDO-RS)");
            let page: Vec<Value> = match status {
                204 => Vec::new(),
                200 if body.is_empty() => Vec::new(),
                200 => serde_json::from_slice(&body).map_err(|e| PacsError::Protocol {
                    url: shown.clone(),
                    message: format!("not a DICOM JSON array: {e}"),
                })?,
                s => {
                    return Err(PacsError::Http {
                        url: shown,
                        status: s,
                        message: snippet(&body),
                    });
                }
            };
            let before = seen.len();
            received += page.len();
            for v in &page {
                let text = |tag: &str| {
                    v.get(tag)
                        .and_then(|e| e.get("Value"))
                        .and_then(|a| a.get(0))
                        .and_then(|x| match x {
                            Value::String(s) => Some(s.clone()),
                            Value::Number(n) => Some(n.to_string()),
                            _ => None,
                        })
                        .unwrap_or_default()
                };
                let inst = Instance {
                    study: text("0020000D"),
                    series: text("0020000E"),
                    sop: text("00080018"),
                    sop_class: text("00080016"),
                    modality: text("00080060"),
                    study_date: text("00080020"),
                    rows: text("00280010").parse().ok(),
                };
                if inst.study.is_empty() || inst.series.is_empty() || inst.sop.is_empty() {
                    return Err(PacsError::Protocol {
                        url: shown,
                        message: "an instance without its Study, Series or SOP Instance UID".into(),
                    });
                }
                if seen.insert(inst.sop.clone()) {
                    out.push(inst);
                }
            }
            // A PACS may cap pages below the limit asked for, so a short page is not the
            // end; an empty one is, and so is a page with nothing new (a PACS that ignores
            // `offset` would otherwise be asked forever).
            if seen.len() == before {
                break;
            }
        }
        Ok(out)
    }

    /// WADO-RS: one instance as a DICOM file, in the transfer syntax it was stored in.
    pub fn retrieve(&self, i: &Instance) -> Result<Vec<u8>> {
        let url = format!(
            "{}/studies/{}/series/{}/instances/{}",
            self.base,
            encode(&i.study),
            encode(&i.series),
            encode(&i.sop)
        );
        let (status, ctype, body) = self.get(
            &url,
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )?;
        let shown = format!("{}/studies/.../instances/... (WADO-RS)", self.base);
        if status != 200 {
            return Err(PacsError::Http {
                url: shown,
                status,
                message: snippet(&body),
            });
        }
        let ctype = ctype.unwrap_or_default();
        let mut parts = multipart_parts(&ctype, &body).map_err(|m| PacsError::Protocol {
            url: shown.clone(),
            message: m,
        })?;
        if parts.is_empty() {
            return Err(PacsError::Protocol {
                url: shown,
                message: "the answer holds no DICOM part".into(),
            });
        }
        Ok(parts.swap_remove(0))
    }

    /// STOW-RS: stores DICOM files (each a complete file with its meta header).
    pub fn store(&self, files: &[Vec<u8>]) -> Result<()> {
        let boundary = format!("medret-{:016x}", rand::random::<u64>());
        let mut body = Vec::new();
        for f in files {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(f);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let url = format!("{}/studies", self.base);
        let ctype = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
        let (status, _, answer) = self.call(&url, &|agent| {
            let mut req = agent
                .post(&url)
                .header("Content-Type", &ctype)
                .header("Accept", "application/dicom+json");
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a.header());
            }
            req.send(&body[..])
        })?;
        let shown = format!("{url} (STOW-RS)");
        if status != 200 {
            return Err(PacsError::Http {
                url: shown,
                status,
                message: snippet(&answer),
            });
        }
        // A 200 may still list failed instances (Failed SOP Sequence, 0008,1198).
        let failed = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v.get("00081198").and_then(|e| e.get("Value")).cloned())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        if failed > 0 {
            return Err(PacsError::Protocol {
                url: shown,
                message: format!("the PACS refused {failed} of {} instance(s)", files.len()),
            });
        }
        Ok(())
    }
}

/// Percent-encodes a query value or a UID path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~*".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The start of an error body, for messages (never more than 200 characters).
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    if s.is_empty() { "no message".into() } else { s }
}

/// The bodies of a `multipart/related` answer.
pub fn multipart_parts(
    content_type: &str,
    body: &[u8],
) -> std::result::Result<Vec<Vec<u8>>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or_else(|| {
            format!(
                "not a multipart answer (content type `{}`)",
                snippet(content_type.as_bytes())
            )
        })?;
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let find = |from: usize| -> Option<usize> {
        body.get(from..)?
            .windows(d.len())
            .position(|w| w == d)
            .map(|p| p + from)
    };
    let mut parts = Vec::new();
    let mut at = find(0).ok_or("the multipart answer has no boundary")?;
    loop {
        let after = at + d.len();
        if body.get(after..after + 2) == Some(b"--") {
            break;
        }
        let head_end = body
            .get(after..)
            .and_then(|b| b.windows(4).position(|w| w == b"\r\n\r\n"))
            .map(|p| after + p + 4)
            .ok_or("a multipart part without headers")?;
        let next = find(head_end).ok_or("a multipart part without its closing boundary")?;
        // The CRLF before a boundary belongs to the boundary.
        let end = if next >= 2 && &body[next - 2..next] == b"\r\n" {
            next - 2
        } else {
            next
        };
        parts.push(body[head_end..end].to_vec());
        at = next;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_and_never_show() {
        let a = Auth::parse(" medret:s3cr:et \n").unwrap();
        assert!(
            matches!(&a, Auth::Basic { user, password } if user == "medret" && password == "s3cr:et")
        );
        assert!(!format!("{a:?}").contains("s3cr"));
        assert_eq!(a.header(), "Basic bWVkcmV0OnMzY3I6ZXQ=");
        let b = Auth::parse("Bearer abc.def").unwrap();
        assert!(!format!("{b:?}").contains("abc"));
        assert_eq!(b.header(), "Bearer abc.def");
        assert!(Auth::parse("nocolon").is_err());
        assert!(Auth::parse("Bearer ").is_err());
        let e =
            DicomWeb::new("http://u:p@host/dicom-web", None, None, Limits::default()).unwrap_err();
        assert!(
            e.to_string().contains("holds credentials") && !e.to_string().contains("u:p"),
            "{e}"
        );
        assert!(DicomWeb::new("ftp://host", None, None, Limits::default()).is_err());
    }

    #[test]
    fn multipart_answers_split_into_parts() {
        let body = b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nTW\r\nO\r\n--b1--\r\n";
        let parts = multipart_parts(
            "multipart/related; type=\"application/dicom\"; boundary=\"b1\"",
            body,
        )
        .unwrap();
        assert_eq!(parts, vec![b"ONE".to_vec(), b"TW\r\nO".to_vec()]);
        assert!(multipart_parts("application/json", body).is_err());
        assert!(
            multipart_parts(
                "multipart/related; boundary=b1",
                b"--b1\r\nX: y\r\n\r\nno end"
            )
            .is_err()
        );
    }
}
