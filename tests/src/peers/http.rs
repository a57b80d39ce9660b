//! Blocking HTTP calls to a peer's API. Every failure is an [`ApiError`] naming the peer, the
//! URL and what was asked (the `PromQL` query, the trace id, ...), with the peer's own error text.

use std::time::Duration;

/// The longest piece of a response body quoted in an error.
const BODY_QUOTE: usize = 2000;

/// A failed call to a peer's API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer at all (connection refused, timeout, broken response).
    #[error(
        "{peer}: {what}: {url} gave no answer: {source} (is the {peer} process still running? its log is in its temp dir)"
    )]
    Transport {
        /// `prometheus` or `jaeger`.
        peer: &'static str,
        /// What was asked, e.g. ``query `up` ``.
        what: String,
        /// The request URL without its query string.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The peer answered with an error status or an error document; `message` is its own text
    /// (Prometheus: `<errorType>: <error>`; Jaeger: the `errors[].msg` list).
    #[error("{peer} rejected {what} ({url}): HTTP {status}: {message}")]
    Rejected {
        /// `prometheus` or `jaeger`.
        peer: &'static str,
        /// What was asked.
        what: String,
        /// The request URL without its query string.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The peer's error text (or the body when it has no error field).
        message: String,
    },
    /// An answer whose shape is not what the API documents (or not the result type asked for).
    #[error("{peer}: {what} ({url}): unexpected answer: {detail}; body: {body}")]
    Unexpected {
        /// `prometheus` or `jaeger`.
        peer: &'static str,
        /// What was asked.
        what: String,
        /// The request URL without its query string.
        url: String,
        /// What is wrong with it.
        detail: String,
        /// The start of the body.
        body: String,
    },
}

impl ApiError {
    /// The HTTP status of a rejected call.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The peer's own error text of a rejected call.
    #[must_use]
    pub fn message(&self) -> Option<&str> {
        match self {
            ApiError::Rejected { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether the peer answered 404 (e.g. a trace Jaeger does not have yet).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// One answered request.
pub(crate) struct Answer {
    pub status: u16,
    pub body: String,
    /// Identifies the request in errors.
    pub what: String,
    pub url: String,
    pub peer: &'static str,
}

impl Answer {
    /// An [`ApiError::Rejected`] with `message`.
    pub fn rejected(&self, message: String) -> ApiError {
        ApiError::Rejected {
            peer: self.peer,
            what: self.what.clone(),
            url: self.url.clone(),
            status: self.status,
            message,
        }
    }

    /// An [`ApiError::Unexpected`] saying `detail`.
    pub fn unexpected(&self, detail: impl Into<String>) -> ApiError {
        ApiError::Unexpected {
            peer: self.peer,
            what: self.what.clone(),
            url: self.url.clone(),
            detail: detail.into(),
            body: quote_body(&self.body),
        }
    }
}

fn quote_body(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(BODY_QUOTE) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

/// A peer's HTTP API at one base URL.
pub(crate) struct Http {
    peer: &'static str,
    base: String,
    agent: ureq::Agent,
}

impl Http {
    /// A client for `base` (e.g. `http://127.0.0.1:9090`).
    pub fn new(peer: &'static str, base: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Http {
            peer,
            base: base.trim_end_matches('/').to_owned(),
            agent,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET `path` with query `params`; any HTTP status is an [`Answer`].
    pub fn get(&self, path: &str, params: &[(&str, &str)], what: &str) -> Result<Answer, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        for (key, value) in params {
            request = request.query(*key, *value);
        }
        self.finish(request.call(), url, what)
    }

    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        url: String,
        what: &str,
    ) -> Result<Answer, ApiError> {
        let transport = |source| ApiError::Transport {
            peer: self.peer,
            what: what.to_owned(),
            url: url.clone(),
            source: Box::new(source),
        };
        let mut response = response.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .map_err(transport)?;
        Ok(Answer {
            status,
            body,
            what: what.to_owned(),
            url,
            peer: self.peer,
        })
    }
}
