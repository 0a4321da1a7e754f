//! The smallest HTTP/1.1 client that does what the payment gateway and the
//! webhooks need: one JSON POST per connection, read to the end. Plain
//! `http://` only; no HTTP client dependency on the build.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An `http://host:port/path` URL split into where to connect and what to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host_port: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host_port.is_empty() || !host_port.contains(':') {
            return Err(format!("{url:?}: give host:port"));
        }
        Ok(Target { host_port: host_port.to_string(), path: path.to_string() })
    }

    /// POSTs `body` as JSON with extra headers; the status and the body of
    /// the answer.
    pub async fn post(&self, headers: &[(&str, &str)], body: &str) -> std::io::Result<(u16, String)> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.path,
            self.host_port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut stream = tokio::net::TcpStream::connect(&self.host_port).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream).take(MAX_RESPONSE_BYTES as u64).read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("the answer is not HTTP"))?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim().to_string();
        Ok((status, body))
    }
}
