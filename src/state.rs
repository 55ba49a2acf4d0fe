//! The gateway's long-lived parts and its current [`Runtime`] snapshot.
//!
//! A `Runtime` is immutable: the validated config, the key table built from it, and the
//! upstream credential read from the environment. A request loads the snapshot once and uses it
//! throughout, so a reload (build a new one, then swap) never changes a request midway.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::auth::KeyStore;
use crate::config::Config;
use crate::upstream::{UpstreamClient, client};

pub struct Runtime {
    pub config: Config,
    pub keys: KeyStore,
    /// `Bearer <upstream key>`, marked sensitive; `None` when the variable is unset or empty.
    pub upstream_auth: Option<HeaderValue>,
}

impl Runtime {
    /// Builds a snapshot, reading the upstream key from `upstream.api_key_env`.
    pub fn new(config: Config) -> Self {
        let key = std::env::var(&config.upstream.api_key_env).ok();
        Self::with_upstream_key(config, key.as_deref())
    }

    /// Builds a snapshot with an explicit upstream key (`None` or blank: not configured).
    pub fn with_upstream_key(config: Config, upstream_key: Option<&str>) -> Self {
        let upstream_auth = upstream_key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .and_then(|k| HeaderValue::try_from(format!("Bearer {k}")).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let keys = KeyStore::new(&config.keys);
        Self {
            config,
            keys,
            upstream_auth,
        }
    }
}

/// What every request shares: the current snapshot and the upstream connection pool.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub client: UpstreamClient,
}

impl Gateway {
    pub fn new(runtime: Runtime) -> Result<Self, rustls::Error> {
        let client = client::build(runtime.config.upstream.connect_timeout)?;
        Ok(Self {
            runtime: ArcSwap::from_pointee(runtime),
            client,
        })
    }

    /// The current snapshot; hold it for the whole request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Installs a new snapshot; requests already running keep the one they started with.
    pub fn swap(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }
}
