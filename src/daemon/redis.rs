//! Redis connections of a process. The queue, the throttle and the session channel each
//! open their own client the same way: reconnecting for ever (Redis restarts, killed
//! connections) with a back-off of up to 5 s, and a first connection that must succeed
//! within 5 s.

use fred::prelude::{Builder, Client, ClientLike, Config, Error, ErrorKind, ReconnectPolicy};
use std::time::Duration;

/// How long the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `url` whose commands give up after `command_timeout`; not connected yet.
pub fn client(url: &str, command_timeout: Duration) -> Result<Client, Error> {
    Builder::from_config(Config::from_url(url)?)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(3);
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()
}

/// Connects `client` (or a `clone_new` of one); on failure it is shut down again.
pub async fn connect(client: &Client) -> Result<(), Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client.init()).await {
        Ok(Ok(_task)) => Ok(()),
        Ok(Err(e)) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
            Err(e)
        }
        Err(_) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
            Err(Error::new(ErrorKind::Timeout, "connection timed out"))
        }
    }
}

/// [`client`], connected.
pub async fn connected(url: &str, command_timeout: Duration) -> Result<Client, Error> {
    let client = client(url, command_timeout)?;
    connect(&client).await?;
    Ok(client)
}
