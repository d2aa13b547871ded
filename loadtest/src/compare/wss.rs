//! The wss:// part of the comparison: which TLS runs there are, what each
//! asks of `ringway-load`, and the one certificate both proxies serve.
//!
//! Every wss:// scenario runs against ringway (`--tls-listen`) and nginx
//! (`listen ... ssl`), never `direct`: the echo backend speaks ws:// only.
//! The certificate is made at run time (ECDSA P-256, rcgen) in the run's
//! temporary directory; the generator takes it with `--insecure`, which
//! still checks the handshake signature, so its work per handshake is that
//! of a verifying client less the chain check. Both proxies offer the same
//! choice: TLS 1.2 and 1.3, the client's cipher order (rustls' own: AES-256-GCM
//! first), X25519 first; each run's report names what was negotiated.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use super::Scenario;

/// The TLS version a run offers (`ringway-load --tls-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    V12,
    V13,
}

impl TlsVersion {
    /// As `ringway-load --tls-version` takes it.
    pub fn arg(self) -> &'static str {
        match self {
            TlsVersion::V12 => "1.2",
            TlsVersion::V13 => "1.3",
        }
    }

    /// As nginx's `ssl_protocols` names it.
    pub fn nginx(self) -> &'static str {
        match self {
            TlsVersion::V12 => "TLSv1.2",
            TlsVersion::V13 => "TLSv1.3",
        }
    }
}

/// A TLS set-up: the version, and whether sessions are resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlsVariant {
    pub version: TlsVersion,
    /// On: the client resumes (`--resume`) and nginx keeps sessions
    /// (`ssl_session_cache shared:SSL:10m; ssl_session_tickets on`). Off:
    /// every handshake is full, and nginx keeps none (`ssl_session_cache
    /// off; ssl_session_tickets off`). ringway has no switch: it always
    /// offers tickets and a session cache.
    pub resume: bool,
}

impl TlsVariant {
    /// Every variant nginx gets a `server` for, in port order.
    pub const ALL: [TlsVariant; 4] = [
        TlsVariant::new(TlsVersion::V13, false),
        TlsVariant::new(TlsVersion::V13, true),
        TlsVariant::new(TlsVersion::V12, false),
        TlsVariant::new(TlsVersion::V12, true),
    ];

    pub const fn new(version: TlsVersion, resume: bool) -> TlsVariant {
        TlsVariant { version, resume }
    }

    /// `ringway-load` flags: `--tls-version 1.3 [--resume]`.
    pub fn load_args(self) -> Vec<String> {
        let mut a = vec!["--tls-version".to_string(), self.version.arg().to_string()];
        if self.resume {
            a.push("--resume".to_string());
        }
        a
    }

    /// `TLS 1.3, resumed` or `TLS 1.2, full handshakes`.
    pub fn words(self) -> String {
        format!(
            "TLS {}, {}",
            self.version.arg(),
            if self.resume {
                "resumed"
            } else {
                "full handshakes"
            }
        )
    }
}

/// The wss:// scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wss {
    /// Connect cycles, TLS 1.3, a full handshake each.
    Connect13,
    /// Connect cycles, TLS 1.3, sessions resumed.
    Resume13,
    /// Connect cycles, TLS 1.2, a full handshake each.
    Connect12,
    /// Connect cycles, TLS 1.2, sessions resumed.
    Resume12,
    /// Closed-loop echo over TLS 1.3: CPU per message.
    Echo,
    /// 1 MiB messages over TLS 1.3: CPU per MB.
    Bulk,
    /// Idle TLS 1.3 tunnels held: memory per tunnel.
    Idle,
}

impl Wss {
    pub const ALL: [Wss; 7] = [
        Wss::Connect13,
        Wss::Resume13,
        Wss::Connect12,
        Wss::Resume12,
        Wss::Echo,
        Wss::Bulk,
        Wss::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Wss::Connect13 => "wss-connect",
            Wss::Resume13 => "wss-resume",
            Wss::Connect12 => "wss12-connect",
            Wss::Resume12 => "wss12-resume",
            Wss::Echo => "wss-echo",
            Wss::Bulk => "wss-bulk",
            Wss::Idle => "wss-idle",
        }
    }

    /// The ws:// scenario it runs underneath (the same `ringway-load`
    /// subcommand, over TLS).
    pub fn base(self) -> Scenario {
        match self {
            Wss::Connect13 | Wss::Resume13 | Wss::Connect12 | Wss::Resume12 => Scenario::Connect,
            Wss::Echo => Scenario::Echo,
            Wss::Bulk => Scenario::Bulk,
            Wss::Idle => Scenario::Idle,
        }
    }

    /// The TLS set-up of the scenario. Echo, bulk and idle use TLS 1.3
    /// with full handshakes, against nginx's server that keeps sessions
    /// (as ringway always does).
    pub fn variant(self) -> TlsVariant {
        use TlsVersion::*;
        match self {
            Wss::Connect13 | Wss::Echo | Wss::Bulk | Wss::Idle => TlsVariant::new(V13, false),
            Wss::Resume13 => TlsVariant::new(V13, true),
            Wss::Connect12 => TlsVariant::new(V12, false),
            Wss::Resume12 => TlsVariant::new(V12, true),
        }
    }

    /// Which of nginx's TLS servers the scenario goes to.
    pub fn nginx_server(self) -> TlsVariant {
        match self.base() {
            Scenario::Connect => self.variant(),
            _ => TlsVariant {
                resume: true,
                ..self.variant()
            },
        }
    }
}

/// The certificate and key both proxies serve, written to `dir`:
/// `wss-cert.pem` and `wss-key.pem`, ECDSA P-256, for 127.0.0.1 and
/// localhost.
pub fn write_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("making the wss:// key")?;
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .context("the wss:// certificate's names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringway-compare");
    let cert = params
        .self_signed(&key)
        .context("signing the wss:// certificate")?;
    let (cert_path, key_path) = (dir.join("wss-cert.pem"), dir.join("wss-key.pem"));
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    std::fs::write(&key_path, key.serialize_pem())
        .with_context(|| format!("writing {}", key_path.display()))?;
    Ok((cert_path, key_path))
}

/// What a wss:// report's handshakes negotiated, in words:
/// `TLSv1_3 TLS13_AES_256_GCM_SHA384, 40 of 2000 resumed`.
pub fn tls_words(report: &Value) -> Option<String> {
    let tls = report.get("tls")?;
    let s = |k: &str| tls.get(k).and_then(Value::as_str).unwrap_or("?");
    let n = |k: &str| tls.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (full, resumed) = (n("full_handshakes"), n("resumed_handshakes"));
    Some(format!(
        "{} {}, {resumed} of {} resumed",
        s("version"),
        s("suite"),
        full + resumed
    ))
}

/// Per target, each distinct version and suite its wss:// runs
/// negotiated, once: `ringway: TLSv1_3 TLS13_AES_256_GCM_SHA384, ...`.
pub fn negotiated<'a>(runs: impl Iterator<Item = (&'static str, &'a Value)>) -> Vec<String> {
    let mut seen: Vec<(&str, Vec<String>)> = Vec::new();
    for (target, report) in runs {
        let Some(tls) = report.get("tls") else {
            continue;
        };
        let s = |k: &str| {
            tls.get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let what = format!("{} {}", s("version"), s("suite"));
        let at = match seen.iter().position(|(t, _)| *t == target) {
            Some(i) => i,
            None => {
                seen.push((target, Vec::new()));
                seen.len() - 1
            }
        };
        if !seen[at].1.contains(&what) {
            seen[at].1.push(what);
        }
    }
    seen.into_iter()
        .map(|(t, w)| format!("{t}: {}", w.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_and_their_flags() {
        assert_eq!(
            Wss::Resume12.variant().load_args(),
            ["--tls-version", "1.2", "--resume"]
        );
        assert_eq!(
            Wss::Connect13.variant().load_args(),
            ["--tls-version", "1.3"]
        );
        // Four connect scenarios: each version with and without resumption.
        let mut seen: Vec<TlsVariant> = Wss::ALL
            .iter()
            .filter(|w| w.base() == Scenario::Connect)
            .map(|w| w.variant())
            .collect();
        seen.dedup();
        assert_eq!(seen, TlsVariant::ALL);
        // Echo, bulk and idle: full TLS 1.3 handshakes, nginx's resuming server.
        assert_eq!(Wss::Idle.variant(), TlsVariant::new(TlsVersion::V13, false));
        assert!(Wss::Idle.nginx_server().resume);
        assert_eq!(Wss::Connect13.nginx_server(), Wss::Connect13.variant());
        assert_eq!(Wss::Resume12.variant().words(), "TLS 1.2, resumed");
    }

    #[test]
    fn the_certificate_is_ecdsa_p256_and_loads() {
        let dir = std::env::temp_dir().join(format!("ringway-compare-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = write_certificate(&dir).unwrap();
        let key_pem = std::fs::read_to_string(&key).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"), "{key_pem}");
        // The load tools' own server (as ringway-echo uses it) accepts it.
        crate::tls::server_config_from_files(&cert, &key).unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
