//! `mock-upstream [ADDR]`: runs the mock on ADDR (default 127.0.0.1:0) and prints its address.
//! It keeps no record of requests, so its memory stays flat under a load benchmark.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| std::io::Error::other(format!("bad address {a:?}: {e}")))?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mock = mock_upstream::MockUpstream::start_unrecorded(addr).await?;
    println!("mock-upstream listening on {}", mock.addr);
    mock.wait().await;
    Ok(())
}
