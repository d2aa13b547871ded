//! wss:// in ringway: the certificates of the TLS listeners (chosen by SNI,
//! reloaded on SIGHUP), each core's server configuration, and the client
//! configuration for wss:// backends. The record work is in [`session`].
//!
//! Certificates are loaded with the configuration into a [`ServerTls`]
//! shared by all cores. Each core builds its own `ServerConfig` (its own
//! session cache, so no two cores contend for one lock) around the shared
//! certificate resolver and the shared ticket key (so a ticket works on
//! every core). A reload (`config::reload`) loads them again into the new
//! configuration, keeping the ticket key and each core's session cache;
//! live sessions keep what they started with.

pub mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Sessions each core remembers for resumption by session ID (TLS 1.2
/// clients without tickets); tickets need no memory.
const SESSION_CACHE_PER_CORE: usize = 4096;

/// TLS 1.2 and 1.3, nothing older.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one protocol spoken over TLS: WebSocket upgrades are HTTP/1.1.
const ALPN: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the certificates of the TLS listeners come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFiles {
    /// `--cert`/`--key`: for clients without SNI and names no `--sni-cert`
    /// matches. Without it, the first `--sni-cert` is the default.
    pub default: Option<(PathBuf, PathBuf)>,
    /// `--sni-cert HOST=CERT,KEY`: HOST is a name or `*.suffix`.
    pub sni: Vec<(String, PathBuf, PathBuf)>,
    /// `--sni-strict`: a name with no certificate fails the handshake
    /// instead of getting the default.
    pub strict: bool,
}

impl CertFiles {
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.sni.is_empty()
    }
}

/// Parse `--sni-cert HOST=CERT,KEY`.
pub fn parse_sni_cert(s: &str) -> Result<(String, PathBuf, PathBuf), String> {
    let (host, files) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected HOST=CERT,KEY"))?;
    let (cert, key) = files
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected HOST=CERT,KEY"))?;
    let host = host.trim().to_ascii_lowercase();
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    if bare.is_empty() || bare.contains('*') || ServerName::try_from(bare).is_err() {
        return Err(format!(
            "{s:?}: {host:?} is not a host name (or *.domain pattern)"
        ));
    }
    if cert.is_empty() || key.is_empty() {
        return Err(format!("{s:?}: expected HOST=CERT,KEY"));
    }
    Ok((host, PathBuf::from(cert), PathBuf::from(key)))
}

/// Load one certificate chain and its private key, checking that they match.
/// `flag` names where the files came from, for the message.
fn load_pair(
    flag: &str,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    use rustls::pki_types::pem::Error as PemError;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag}: certificate file {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{flag}: certificate file {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        PemError::NoItemsFound => format!(
            "{flag}: key file {}: no PEM private key in it (PKCS#8, RSA or EC)",
            key.display()
        ),
        e => format!("{flag}: key file {}: {e}", key.display()),
    })?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{flag}: the private key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
            e => format!("{flag}: key file {}: {e}", key.display()),
        })
}

/// Picks a certificate by the name the client asked for.
#[derive(Debug)]
struct Resolver {
    default: Arc<CertifiedKey>,
    /// Lowercase names and `*.suffix` patterns.
    named: Vec<(String, Arc<CertifiedKey>)>,
    strict: bool,
}

impl Resolver {
    fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<Resolver, String> {
        let mut named = Vec::new();
        for (host, cert, key) in &files.sni {
            let flag = format!("--sni-cert {host}");
            named.push((host.clone(), load_pair(&flag, cert, key, provider)?));
        }
        let default = match &files.default {
            Some((cert, key)) => load_pair("--cert/--key", cert, key, provider)?,
            None => match named.first() {
                Some((_, k)) => k.clone(),
                None => return Err("no certificate: give --cert and --key".into()),
            },
        };
        Ok(Resolver {
            default,
            named,
            strict: files.strict,
        })
    }

    fn count(&self) -> usize {
        self.named.len() + 1
    }

    /// The certificate for `name`: an exact `--sni-cert`, then a `*.`
    /// pattern one label up, then the default (when strict, only if the
    /// default certificate is valid for the name).
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return Some(self.default.clone());
        };
        let name = name.trim_end_matches('.');
        let found = |pattern: &str| {
            self.named
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(pattern))
                .map(|(_, k)| k.clone())
        };
        if let Some(k) = found(name) {
            return Some(k);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = found(&format!("*.{parent}")) {
                return Some(k);
            }
        }
        if !self.strict || valid_for(&self.default, name) {
            return Some(self.default.clone());
        }
        None
    }
}

/// Whether `key`'s certificate names `name` (its SANs, wildcards included).
fn valid_for(key: &CertifiedKey, name: &str) -> bool {
    let (Some(der), Ok(name)) = (key.cert.first(), ServerName::try_from(name)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .and_then(|ee| ee.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = self.pick(hello.server_name());
        if picked.is_none() {
            log::debug!(
                "no certificate for SNI name {:?} (--sni-strict)",
                hello.server_name()
            );
        }
        picked
    }
}

/// The TLS listeners' certificates, shared by all cores. A reload builds a
/// new one (with the old one's ticket key) inside the new configuration.
#[derive(Debug)]
pub struct ServerTls {
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    resolver: Arc<Resolver>,
}

impl ServerTls {
    /// Load every certificate; any problem is an error naming the file.
    pub fn load(files: CertFiles) -> Result<ServerTls, String> {
        let provider = provider();
        let resolver = Resolver::load(&files, &provider)?;
        ServerTls::with_resolver(provider, resolver)
    }

    /// Certificates already in memory (the fuzz targets make their own):
    /// `default`, and `named` ones picked by SNI as `--sni-cert` gives them.
    pub(crate) fn from_keys(
        default: Arc<CertifiedKey>,
        named: Vec<(String, Arc<CertifiedKey>)>,
        strict: bool,
    ) -> Result<ServerTls, String> {
        let resolver = Resolver {
            default,
            named,
            strict,
        };
        ServerTls::with_resolver(provider(), resolver)
    }

    fn with_resolver(
        provider: Arc<CryptoProvider>,
        resolver: Resolver,
    ) -> Result<ServerTls, String> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("cannot make a session ticket key: {e}"))?;
        Ok(ServerTls {
            provider,
            ticketer,
            resolver: Arc::new(resolver),
        })
    }

    /// Take over `old`'s session ticket key, so that tickets issued before
    /// a reload still resume after it.
    pub fn keep_ticket_key_of(&mut self, old: &ServerTls) {
        self.ticketer = old.ticketer.clone();
    }

    /// How many certificates were loaded.
    pub fn count(&self) -> usize {
        self.resolver.count()
    }
}

/// One core's TLS server configuration for one configuration generation.
#[derive(Debug)]
pub struct CoreTls {
    config: Arc<ServerConfig>,
}

/// One core's memory of TLS sessions, kept across reloads.
pub type SessionCache = Arc<ServerSessionMemoryCache>;

/// A new per-core session cache.
pub fn session_cache() -> SessionCache {
    ServerSessionMemoryCache::new(SESSION_CACHE_PER_CORE)
}

impl CoreTls {
    pub fn new(shared: &ServerTls, cache: SessionCache) -> Result<CoreTls, String> {
        Ok(CoreTls {
            config: server_config(shared, shared.resolver.clone(), cache)?,
        })
    }

    /// The configuration for a new handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

fn server_config(
    shared: &ServerTls,
    resolver: Arc<Resolver>,
    cache: Arc<ServerSessionMemoryCache>,
) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(shared.provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = cache;
    config.ticketer = shared.ticketer.clone();
    Ok(Arc::new(config))
}

/// How wss:// backends are verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTrust {
    /// `--upstream-ca`: PEM roots instead of the system's.
    pub ca: Option<PathBuf>,
    /// `--upstream-insecure`: no verification at all.
    pub insecure: bool,
}

/// The client configuration for wss:// backends.
pub fn client_config(trust: &UpstreamTrust) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let mut config = if trust.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &trust.ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err(match &trust.ca {
                Some(path) => format!(
                    "--upstream-ca {}: no certificate in the file",
                    path.display()
                ),
                None => "no system root certificates found for wss:// backends; give \
                         --upstream-ca FILE (or --upstream-insecure)"
                    .into(),
            });
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// `--upstream-insecure`: any certificate is accepted (the handshake's
/// signatures are still checked, so the session keys are sound). Also the
/// load generator's `--insecure`.
#[derive(Debug)]
pub struct NoVerification(pub Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_cert_flags_parse_or_say_why() {
        let (h, c, k) = parse_sni_cert("Chat.Example.com=/a/c.pem,/a/k.pem").unwrap();
        assert_eq!(
            (h.as_str(), c, k),
            (
                "chat.example.com",
                PathBuf::from("/a/c.pem"),
                PathBuf::from("/a/k.pem")
            )
        );
        assert_eq!(
            parse_sni_cert("*.example.com=c,k").unwrap().0,
            "*.example.com"
        );
        for bad in [
            "example.com",
            "example.com=c",
            "=c,k",
            "a*.b=c,k",
            "x=,k",
            "x=c,",
        ] {
            assert!(parse_sni_cert(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn pair(names: &[&str]) -> Arc<CertifiedKey> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der()).unwrap();
        Arc::new(
            CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider()).unwrap(),
        )
    }

    #[test]
    fn the_resolver_picks_exact_then_wildcard_then_default() {
        let (default, chat, wild) = (
            pair(&["default.test"]),
            pair(&["chat.test"]),
            pair(&["*.apps.test"]),
        );
        let mut r = Resolver {
            default: default.clone(),
            named: vec![
                ("chat.test".into(), chat.clone()),
                ("*.apps.test".into(), wild.clone()),
            ],
            strict: false,
        };
        let is = |got: Option<Arc<CertifiedKey>>, want: &Arc<CertifiedKey>| {
            got.is_some_and(|g| Arc::ptr_eq(&g, want))
        };
        assert!(is(r.pick(Some("chat.test")), &chat));
        assert!(is(r.pick(Some("CHAT.test.")), &chat));
        assert!(is(r.pick(Some("one.apps.test")), &wild));
        assert!(is(r.pick(Some("two.one.apps.test")), &default));
        assert!(is(r.pick(Some("other.test")), &default));
        assert!(is(r.pick(None), &default));
        r.strict = true;
        assert!(r.pick(Some("other.test")).is_none());
        assert!(is(r.pick(Some("default.test")), &default));
        assert!(is(r.pick(None), &default));
    }
}
