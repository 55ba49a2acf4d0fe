//! `keygate serve`: load the config, bind, serve until SIGTERM or Ctrl-C, drain, exit 0.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::server;
use crate::state::{Gateway, Runtime};

pub async fn run(path: &Path) -> ExitCode {
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for problem in &e.problems {
                tracing::error!("config: {problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    let listen = config.server.listen;
    let tls = match &config.server.tls {
        Some(files) => match server::tls_acceptor(&files.cert, &files.key) {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                tracing::error!("server.tls: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let runtime = Runtime::new(config);
    if runtime.upstream_auth.is_none() {
        tracing::error!(
            "upstream.api_key_env: ${} is not set; every forwarded request will fail with 502 until it is",
            runtime.config.upstream.api_key_env
        );
    }
    let keys = runtime.config.keys.len();
    let limited = runtime
        .config
        .keys
        .iter()
        .filter(|k| k.limits != Default::default())
        .count();
    if limited > 0 {
        tracing::warn!(
            keys = limited,
            "per-key limits are validated but NOT enforced by this version of keygate"
        );
    }
    let gw = match Gateway::new(runtime) {
        Ok(gw) => Arc::new(gw),
        Err(e) => {
            tracing::error!("cannot set up the upstream TLS client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    tracing::info!(%addr, keys, tls = tls.is_some(), "keygate listening");
    server::run(listener, gw, tls, shutdown_signal()).await;
    tracing::info!("keygate stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
