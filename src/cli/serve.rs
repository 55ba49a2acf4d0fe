//! `keygate serve`: load the config, bind, serve until SIGTERM or Ctrl-C, drain, exit 0.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::limits::SystemClock;
use crate::server;
use crate::state::{Gateway, Runtime};

/// How long exit waits for the ledger to take the last usage events.
const LEDGER_SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the gateway on its own runtime. After the drain, tasks still open (past the grace
/// period) are dropped first, which settles their requests; only then is the ledger flushed,
/// so their usage is written too.
pub fn run(path: &Path) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut code, gateway) = rt.block_on(serve(path));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(gw) = gateway {
        let recorder = &gw.metering.recorder;
        if !recorder.flush(LEDGER_SHUTDOWN_FLUSH) {
            // Spend that is not in the ledger would be forgotten by the next start: say so
            // with the exit status, so a supervisor notices.
            tracing::error!(
                "the usage ledger could not be flushed before exit: recent usage is lost"
            );
            code = ExitCode::FAILURE;
        }
        if recorder.dropped() > 0 {
            tracing::error!(
                dropped = recorder.dropped(),
                "usage events were dropped while running"
            );
        }
        tracing::info!("keygate stopped");
    }
    code
}

async fn serve(path: &Path) -> (ExitCode, Option<Arc<Gateway>>) {
    // The path as given, not its target: a Kubernetes ConfigMap update swaps the `..data`
    // symlink and deletes the old target, so only the given path follows it. (Edits lock
    // and replace the real file: config::edit resolves it.)
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let hup = crate::reload::hangup_signal();
    let loaded = crate::reload::stamp(path);
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for problem in &e.problems {
                tracing::error!("config: {problem}");
            }
            return (ExitCode::FAILURE, None);
        }
    };
    let listen = config.server.listen;
    let tls = match &config.server.tls {
        Some(files) => match server::tls_acceptor(&files.cert, &files.key) {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                tracing::error!("server.tls: {e}");
                return (ExitCode::FAILURE, None);
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

    let gw = match Gateway::start(runtime, Arc::new(SystemClock::new())) {
        Ok(gw) => Arc::new(gw.with_config_path(path.to_owned())),
        Err(e) => {
            tracing::error!("{e}");
            return (ExitCode::FAILURE, None);
        }
    };
    // The parse of a large file is over: its transient memory need not stay resident.
    crate::memory::release_freed();
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {listen}: {e}");
            return (ExitCode::FAILURE, None);
        }
    };
    let admin_listen = gw.runtime().config.admin.listen;
    let admin = match TcpListener::bind(admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {admin_listen} (admin.listen): {e}");
            return (ExitCode::FAILURE, None);
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    let admin_addr = admin
        .local_addr()
        .map_or_else(|_| admin_listen.to_string(), |a| a.to_string());
    tracing::info!(%addr, keys, tls = tls.is_some(), "keygate listening");
    tracing::info!(%admin_addr, "admin listening");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(server::serve_admin(
        admin,
        gw.clone(),
        wait_for(stopped.clone()),
    ));
    tokio::spawn(crate::reload::watch(
        gw.clone(),
        path.to_owned(),
        loaded,
        hup,
        wait_for(stopped.clone()),
    ));
    tokio::spawn(crate::upstream::probe::watch(
        gw.clone(),
        wait_for(stopped.clone()),
    ));
    server::run(listener, gw.clone(), tls, async {
        shutdown_signal().await;
        let _ = stop.send(true);
    })
    .await;
    let _ = admin_task.await;
    (ExitCode::SUCCESS, Some(gw))
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
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
