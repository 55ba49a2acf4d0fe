//! The routes keygate forwards, with and without the `/v1` prefix, and the canonical-path rule
//! that makes "what was authorized" byte-for-byte "what is forwarded".

use http::Method;

use crate::access::Scope;
use crate::error::Refusal;

/// What a matched route is, and so how it is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Scope comes from the model in the body.
    ChatCompletions,
    Completions,
    Embeddings,
    /// Needs only a valid key; the answer is filtered to the key's models.
    ListModels,
    RetrieveModel,
    Files,
    FineTuning,
    Images,
    Audio,
}

impl RouteKind {
    /// The scope the route itself demands; `None` where the model decides (or no scope is needed).
    pub fn scope(self) -> Option<Scope> {
        match self {
            RouteKind::ChatCompletions | RouteKind::Completions => None,
            RouteKind::ListModels | RouteKind::RetrieveModel => None,
            RouteKind::Embeddings => Some(Scope::Embeddings),
            RouteKind::Files => Some(Scope::Files),
            RouteKind::FineTuning => Some(Scope::FineTuning),
            RouteKind::Images => Some(Scope::Image),
            RouteKind::Audio => Some(Scope::Audio),
        }
    }

    /// Whether a request body on this route may choose a model (and so must be checked
    /// against a key's model list).
    pub fn may_name_model(self) -> bool {
        self.requires_model()
            || matches!(
                self,
                RouteKind::Images | RouteKind::Audio | RouteKind::FineTuning
            )
    }

    /// Whether the route's answers report token usage: the only answers keygate reads usage
    /// from (never file contents or other bodies).
    pub fn reports_usage(self) -> bool {
        self.requires_model()
    }

    /// Whether the route generates completion tokens, bounded by a `max_tokens` cap.
    pub fn generates_tokens(self) -> bool {
        matches!(self, RouteKind::ChatCompletions | RouteKind::Completions)
    }

    /// Whether a model named on this route is priced per request (`per_request_usd`).
    pub fn priced_per_request(self) -> bool {
        matches!(
            self,
            RouteKind::Images | RouteKind::Audio | RouteKind::FineTuning
        )
    }

    /// Whether the request body must be a JSON object naming a model.
    pub fn requires_model(self) -> bool {
        matches!(
            self,
            RouteKind::ChatCompletions | RouteKind::Completions | RouteKind::Embeddings
        )
    }
}

#[derive(Clone, Copy)]
enum Seg {
    Lit(&'static str),
    Param,
}

struct Entry {
    segments: &'static [Seg],
    methods: &'static [Method],
    kind: RouteKind,
    /// Bounded label for logs and metrics.
    endpoint: &'static str,
}

use Seg::{Lit, Param};

const POST: &[Method] = &[Method::POST];
const GET: &[Method] = &[Method::GET];

static ROUTES: &[Entry] = &[
    Entry {
        segments: &[Lit("chat"), Lit("completions")],
        methods: POST,
        kind: RouteKind::ChatCompletions,
        endpoint: "/chat/completions",
    },
    Entry {
        segments: &[Lit("completions")],
        methods: POST,
        kind: RouteKind::Completions,
        endpoint: "/completions",
    },
    Entry {
        segments: &[Lit("embeddings")],
        methods: POST,
        kind: RouteKind::Embeddings,
        endpoint: "/embeddings",
    },
    Entry {
        segments: &[Lit("models")],
        methods: GET,
        kind: RouteKind::ListModels,
        endpoint: "/models",
    },
    Entry {
        segments: &[Lit("models"), Param],
        methods: GET,
        kind: RouteKind::RetrieveModel,
        endpoint: "/models/{id}",
    },
    Entry {
        segments: &[Lit("files")],
        methods: &[Method::GET, Method::POST],
        kind: RouteKind::Files,
        endpoint: "/files",
    },
    Entry {
        segments: &[Lit("files"), Param],
        methods: &[Method::GET, Method::DELETE],
        kind: RouteKind::Files,
        endpoint: "/files/{id}",
    },
    Entry {
        segments: &[Lit("files"), Param, Lit("content")],
        methods: GET,
        kind: RouteKind::Files,
        endpoint: "/files/{id}/content",
    },
    Entry {
        segments: &[Lit("fine_tuning"), Lit("jobs")],
        methods: &[Method::GET, Method::POST],
        kind: RouteKind::FineTuning,
        endpoint: "/fine_tuning/jobs",
    },
    Entry {
        segments: &[Lit("fine_tuning"), Lit("jobs"), Param],
        methods: GET,
        kind: RouteKind::FineTuning,
        endpoint: "/fine_tuning/jobs/{id}",
    },
    Entry {
        segments: &[Lit("fine_tuning"), Lit("jobs"), Param, Lit("cancel")],
        methods: POST,
        kind: RouteKind::FineTuning,
        endpoint: "/fine_tuning/jobs/{id}/cancel",
    },
    Entry {
        segments: &[Lit("fine_tuning"), Lit("jobs"), Param, Lit("events")],
        methods: GET,
        kind: RouteKind::FineTuning,
        endpoint: "/fine_tuning/jobs/{id}/events",
    },
    Entry {
        segments: &[Lit("fine_tuning"), Lit("jobs"), Param, Lit("checkpoints")],
        methods: GET,
        kind: RouteKind::FineTuning,
        endpoint: "/fine_tuning/jobs/{id}/checkpoints",
    },
    Entry {
        segments: &[Lit("images"), Lit("generations")],
        methods: POST,
        kind: RouteKind::Images,
        endpoint: "/images/generations",
    },
    Entry {
        segments: &[Lit("images"), Lit("edits")],
        methods: POST,
        kind: RouteKind::Images,
        endpoint: "/images/edits",
    },
    Entry {
        segments: &[Lit("images"), Lit("variations")],
        methods: POST,
        kind: RouteKind::Images,
        endpoint: "/images/variations",
    },
    Entry {
        segments: &[Lit("audio"), Lit("speech")],
        methods: POST,
        kind: RouteKind::Audio,
        endpoint: "/audio/speech",
    },
    Entry {
        segments: &[Lit("audio"), Lit("transcriptions")],
        methods: POST,
        kind: RouteKind::Audio,
        endpoint: "/audio/transcriptions",
    },
    Entry {
        segments: &[Lit("audio"), Lit("translations")],
        methods: POST,
        kind: RouteKind::Audio,
        endpoint: "/audio/translations",
    },
];

/// A matched route.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub kind: RouteKind,
    pub endpoint: &'static str,
    /// The path to forward, after the `/v1` prefix (always starts with `/`).
    pub path: &'a str,
    /// The `{id}` segment, if the route has one.
    pub param: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    NotCanonical,
    NotFound,
    MethodNotAllowed,
}

/// A path is canonical when it starts with `/`, has no empty, `.` or `..` segment, and uses
/// only unreserved characters and `:`. Anything else (percent-encoding, `;`, `\`) is refused.
pub fn check_canonical(path: &str) -> Result<(), RouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RouteError::NotCanonical);
    };
    if rest.is_empty() {
        return Ok(());
    }
    for segment in rest.split('/') {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':')
            });
        if !ok {
            return Err(RouteError::NotCanonical);
        }
    }
    Ok(())
}

/// Refuses a query string on a request whose body names a model: the upstream may read
/// parameters from it that keygate never authorized or priced. Listings and retrievals keep
/// theirs (`?limit=`, `?after=`, `?purpose=`).
pub fn check_query(route: &Route<'_>, method: &Method, query: Option<&str>) -> Result<(), Refusal> {
    if query.is_some() && *method == Method::POST && route.kind.may_name_model() {
        return Err(Refusal::InvalidRequest(
            "This route takes no query string: send its parameters in the JSON body.".into(),
        ));
    }
    Ok(())
}

/// Matches a canonical path (see [`check_canonical`]) against the route table.
pub fn resolve<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, RouteError> {
    check_canonical(path)?;
    let path = match path.strip_prefix("/v1") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    let mut method_mismatch = false;
    for entry in ROUTES {
        let Some(param) = match_segments(entry.segments, path) else {
            continue;
        };
        if !entry.methods.contains(method) {
            method_mismatch = true;
            continue;
        }
        return Ok(Route {
            kind: entry.kind,
            endpoint: entry.endpoint,
            path,
            param,
        });
    }
    Err(if method_mismatch {
        RouteError::MethodNotAllowed
    } else {
        RouteError::NotFound
    })
}

/// `Some(param)` when `path` fits the pattern; the inner option is the `{id}` segment.
fn match_segments<'a>(pattern: &[Seg], path: &'a str) -> Option<Option<&'a str>> {
    let mut parts = path.get(1..).unwrap_or("").split('/');
    let mut param = None;
    for seg in pattern {
        let part = parts.next()?;
        match seg {
            Lit(lit) if *lit == part => {}
            Lit(_) => return None,
            Param => param = Some(part),
        }
    }
    parts.next().is_none().then_some(param)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_and_without_v1() {
        for p in ["/v1/chat/completions", "/chat/completions"] {
            let r = resolve(&Method::POST, p).unwrap();
            assert_eq!(
                (r.kind, r.path),
                (RouteKind::ChatCompletions, "/chat/completions")
            );
        }
        let r = resolve(&Method::GET, "/v1/models/deepseek-chat").unwrap();
        assert_eq!(
            (r.kind, r.param),
            (RouteKind::RetrieveModel, Some("deepseek-chat"))
        );
        assert_eq!(r.endpoint, "/models/{id}");
        let r = resolve(&Method::GET, "/v1/fine_tuning/jobs/ftjob-1/events").unwrap();
        assert_eq!(r.kind.scope(), Some(Scope::FineTuning));
    }

    #[test]
    fn tricks_are_not_canonical_or_not_found() {
        for p in [
            "/v1/chat/completions/../files",
            "/v1/%2e%2e/files",
            "//v1/files",
            "/v1/files/",
            "/v1/./files",
            "/v1/files;x",
            "/v1/files%2fabc",
            "/v1\\files",
            "",
        ] {
            assert_eq!(
                resolve(&Method::GET, p).unwrap_err(),
                RouteError::NotCanonical,
                "{p}"
            );
        }
        assert_eq!(
            resolve(&Method::GET, "/V1/FILES").unwrap_err(),
            RouteError::NotFound
        );
        assert_eq!(
            resolve(&Method::GET, "/v1").unwrap_err(),
            RouteError::NotFound
        );
        assert_eq!(
            resolve(&Method::GET, "/v1/v1/models").unwrap_err(),
            RouteError::NotFound
        );
        assert_eq!(
            resolve(&Method::GET, "/v1/chat/completions").unwrap_err(),
            RouteError::MethodNotAllowed
        );
    }
}
