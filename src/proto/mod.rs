//! Protocols, sans I/O where they can be: HTTP/1.1 heads and bodies
//! ([`http`]), WebSocket keys and frames ([`ws`]), the PROXY protocol
//! ([`proxy_protocol`]), and TLS ([`tls`]: certificates, and one session on
//! rustls's unbuffered API, which moves records through a socket it is
//! handed). Nothing here owns a socket or a timer.

pub mod http;
pub mod proxy_protocol;
pub mod tls;
pub mod ws;
