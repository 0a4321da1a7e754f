//! The outbound HTTP client of the payment gateway and the webhooks: JSON
//! POSTs over `http://` or `https://` (hyper-util's pooled HTTP/1.1 client
//! on rustls; see `tls.rs` for the roots it trusts). Bodies of any framing
//! (length or chunked) are decoded; at most `MAX_RESPONSE_BYTES` of an
//! answer are kept.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Longest part of an answer kept (the rest is read and dropped).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// One pooled client; cheap to clone (clones share connections).
#[derive(Clone)]
pub struct Outbound {
    client: Client<Https, Full<Bytes>>,
}

impl Outbound {
    /// Trusts Mozilla's roots and, when given, the CA certificates in
    /// `extra_ca` (PEM).
    pub fn new(extra_ca: Option<&Path>) -> Result<Outbound, String> {
        let tls = crate::tls::client_config(extra_ca)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .http1_title_case_headers(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Outbound { client })
    }
}

/// An `http://` or `https://` URL to POST to, with the client that does it.
#[derive(Clone)]
pub struct Target {
    uri: hyper::Uri,
    client: Outbound,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("uri", &self.uri).finish()
    }
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host;
/// the port is optional (80 and 443 by default).
pub fn parse_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?}: only http:// and https:// URLs are supported")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: the URL names no host"));
    }
    Ok(uri)
}

impl Target {
    pub fn parse(url: &str, client: &Outbound) -> Result<Target, String> {
        Ok(Target { uri: parse_url(url)?, client: client.clone() })
    }

    /// POSTs `body` as JSON with extra headers; the status and (up to
    /// `MAX_RESPONSE_BYTES` of) the body of the answer.
    pub async fn post(&self, headers: &[(&str, &str)], body: &str) -> std::io::Result<(u16, String)> {
        let request = hyper::Request::post(self.uri.clone()).header("content-type", "application/json");
        self.send(request, headers, body).await
    }

    /// GETs the URL with extra headers: the status and the body.
    pub async fn get(&self, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
        self.send(hyper::Request::get(self.uri.clone()), headers, "").await
    }

    async fn send(
        &self,
        mut request: hyper::http::request::Builder,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request =
            request.body(Full::new(Bytes::copy_from_slice(body.as_bytes()))).map_err(std::io::Error::other)?;
        let response = self.client.client.request(request).await.map_err(|e| {
            // The hyper-util error says "client error (Connect)"; its source
            // says what happened.
            let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            std::io::Error::other(format!("{e}{cause}"))
        })?;
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            // A body cut short after the status still has its status.
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && answer.len() < MAX_RESPONSE_BYTES
            {
                let room = MAX_RESPONSE_BYTES - answer.len();
                answer.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok((status, String::from_utf8_lossy(&answer).trim().to_string()))
    }
}
