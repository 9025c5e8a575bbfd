//! A `kind = "published"` listener: each client connection becomes one stream to a service
//! the agent publishes. The port stays bound whether or not the agent is connected; while it
//! is not (or the agent refuses), the client's connection is closed at once, cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::proto::Open;
use crate::config::PublishedListenerConfig;
use crate::server::Services;

pub struct Published {
    pub name: Arc<str>,
    pub cfg: PublishedListenerConfig,
    pub svc: Arc<Services>,
}

impl Published {
    pub async fn serve(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let what = Open::Service(self.cfg.service.clone());
        let opened = tokio::select! {
            r = self.svc.agents.open_failover(&self.cfg.agent, &what, self.svc.connect_timeout) => r,
            _ = self.svc.shutdown.draining() => return,
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(listener = %self.name, %peer, agent = %self.cfg.agent, service = %self.cfg.service, "published: {e}");
                let _ = stream.shutdown().await;
                return;
            }
        };
        let mut opened = opened;
        // The real client, first: the agent passes the bytes on to the service as they are.
        if let Some(v) = self.cfg.send_proxy {
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let header = crate::l4::proxy_protocol::encode(v, peer, local);
            if opened.stream.write_all(&header).await.is_err() {
                let _ = stream.shutdown().await;
                return;
            }
        }
        let (end, stats) =
            super::stream::relay_tcp(&mut stream, &mut opened.stream, self.cfg.idle_timeout).await;
        opened.count(stats.a_to_b, stats.b_to_a);
        self.svc.metrics.tunnel_bytes(
            &self.cfg.agent,
            &self.cfg.service,
            stats.a_to_b,
            stats.b_to_a,
        );
        let m = &self.svc.metrics;
        m.bytes(&self.name, stats.a_to_b, stats.b_to_a);
        tracing::debug!(listener = %self.name, %peer, ?end, "published: done");
    }
}
