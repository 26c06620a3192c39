//! DNS-over-HTTPS (RFC 8484): POST of `application/dns-message` over
//! HTTP/2, one reqwest client (and so one connection pool) per upstream.

use std::net::SocketAddr;

use hickory_proto::op::Message;

use super::bootstrap::Shared;
use super::{AttemptError, Context, same_question};
use crate::config::{UpstreamAddr, UpstreamHost};

const DNS_MESSAGE: &str = "application/dns-message";

/// One DoH upstream.
#[derive(Debug)]
pub(super) struct Doh {
    label: String,
    /// `None` when TLS could not be set up: every attempt fails.
    client: Option<reqwest::Client>,
    url: String,
    /// Failed requests are logged at most once per 10 s: with the server
    /// unreachable, every query fails one.
    fail_log: crate::throttle::Throttle,
}

impl Doh {
    pub(super) fn new(addr: &UpstreamAddr, ctx: &Context) -> Self {
        let label = addr.to_string();
        // With `#name`, the URL names the server and the address is
        // pinned; a name host goes through the bootstrap resolvers.
        let (host, pinned) = match (&addr.host, &addr.tls_name) {
            (UpstreamHost::Ip(ip), Some(name)) => (
                name.clone(),
                Some((name.clone(), SocketAddr::new(*ip, addr.port))),
            ),
            (host, _) => (host.to_string(), None),
        };
        let url = format!("https://{host}:{}{}", addr.port, addr.path);
        let client = ctx.tls.as_ref().and_then(|(_, doh)| {
            let mut builder = reqwest::Client::builder()
                .tls_backend_preconfigured((**doh).clone())
                .pool_idle_timeout(ctx.idle_timeout)
                .pool_max_idle_per_host(super::stream::POOL_SIZE)
                // Shared among a host's addresses, so one that drops
                // packets does not take the whole attempt.
                .connect_timeout(ctx.timeout)
                .dns_resolver(Shared(ctx.bootstrap.clone()))
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none());
            if let Some((name, addr)) = pinned {
                builder = builder.resolve(&name, addr);
            }
            builder
                .build()
                .map_err(|error| tracing::error!(upstream = %label, %error, "cannot set up DoH"))
                .ok()
        });
        Self {
            label,
            client,
            url,
            fail_log: crate::throttle::Throttle::new(std::time::Duration::from_secs(10)),
        }
    }

    pub(super) async fn exchange(
        &self,
        request: &Message,
        bytes: &[u8],
    ) -> Result<(Message, Vec<u8>), AttemptError> {
        let Some(client) = &self.client else {
            return Err(AttemptError::Io(std::io::Error::other(
                "TLS is unavailable (see the startup log)",
            )));
        };
        // RFC 8484 §4.1: ID 0 makes identical queries cacheable by HTTP.
        let mut body = bytes.to_vec();
        body[..2].copy_from_slice(&[0, 0]);
        let response = client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, DNS_MESSAGE)
            .header(reqwest::header::ACCEPT, DNS_MESSAGE)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let error = error_chain(&e);
                if let Some(suppressed) = self.fail_log.ready() {
                    tracing::warn!(upstream = %self.label, %error, suppressed, "DoH request failed");
                }
                AttemptError::Io(std::io::Error::other(error))
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(AttemptError::Malformed(format!("HTTP status {status}")));
        }
        // RFC 8484 §4.2.1: the answer is a DNS message, at most 65,535
        // bytes; anything else (an error page from a proxy) is read no
        // further.
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim());
        if !kind.is_some_and(|k| k.eq_ignore_ascii_case(DNS_MESSAGE)) {
            return Err(AttemptError::Malformed(format!(
                "content type {}, not {DNS_MESSAGE}",
                kind.unwrap_or("missing")
            )));
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| AttemptError::Io(std::io::Error::other(error_chain(&e))))?
        {
            if body.len() + chunk.len() > usize::from(u16::MAX) {
                return Err(AttemptError::Malformed("larger than a DNS message".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let mut reply =
            Message::from_vec(&body).map_err(|e| AttemptError::Malformed(e.to_string()))?;
        if !same_question(request, &reply) {
            return Err(AttemptError::Malformed(
                "reply does not match the question".into(),
            ));
        }
        reply.metadata.id = request.metadata.id;
        Ok((reply, body))
    }
}

/// An error with its causes: reqwest's own message alone says only
/// "error sending request", the cause says which certificate check failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
