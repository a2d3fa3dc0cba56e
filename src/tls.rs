//! TLS with rustls (ring): termination on listeners, and origination to `https://` endpoints.
//!
//! A TLS listener picks its certificate by SNI from the names of each configured pair (listed,
//! or the certificate's DNS subject alternative names), with the first pair as the default. The
//! pairs live behind an `ArcSwap` inside the certificate resolver, so a renewed pair on disk is
//! swapped in without touching the `ServerConfig`: open connections, session tickets and the
//! ticket keys all survive a renewal. A pair that fails to load keeps the one it replaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{CertificateSpec, ConfigError, EndpointAddr, ListenerTls, Protocol, UpstreamTls};

/// TLS 1.2 sessions remembered for resumption by session ID (clients without tickets).
const SESSION_CACHE: usize = 4096;
/// Quiet time after the last file event before certificates are read again: long enough for
/// cert-manager or certbot to finish writing both files.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The crypto provider every TLS config uses: ring.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Checks an SNI name of `names`: a DNS name or `*.` and one; returned lower-case.
pub fn sni_name(text: &str) -> Result<String, String> {
    let lower = text.trim().to_ascii_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    if bare.contains('*')
        || rustls_pki_types::DnsName::try_from(bare).is_err()
        || bare.parse::<std::net::IpAddr>().is_ok()
    {
        return Err(format!(
            "\"{text}\" is not a DNS name: write e.g. \"app.example.com\" or \"*.example.com\""
        ));
    }
    Ok(lower)
}

/// Reads a PEM file of CA certificates.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = read_certs(path)?;
    let mut roots = rustls::RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
    if bad > 0 {
        return Err(format!(
            "{}: {bad} of its {} certificates cannot be parsed",
            path.display(),
            certs.len()
        ));
    }
    Ok(certs)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no private key (expected \"-----BEGIN PRIVATE KEY-----\", RSA or EC)",
            path.display()
        ),
        e => format!("{} is not valid PEM: {e}", path.display()),
    })
}

/// A certificate and key pair, read and checked.
#[derive(Clone)]
pub struct LoadedPair {
    /// SNI names it serves, lower-case.
    pub names: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for LoadedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPair").field("names", &self.names).finish()
    }
}

impl LoadedPair {
    fn same_as(&self, other: &LoadedPair) -> bool {
        self.names == other.names && self.key.cert == other.key.cert
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }
}

/// Reads and checks one pair: both files readable PEM, the key usable and matching the leaf
/// certificate, and at least one name to serve.
pub fn load_pair(spec: &CertificateSpec) -> Result<LoadedPair, String> {
    let chain = read_certs(&spec.cert)?;
    let key = read_key(&spec.key)?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| format!("{}: the first certificate cannot be parsed: {e}", spec.cert.display()))?;
    let names = if spec.names.is_empty() {
        let names: Vec<String> = leaf.valid_dns_names().map(str::to_ascii_lowercase).collect();
        if names.is_empty() {
            return Err(format!(
                "{} has no DNS names in its subject alternative names: list the names it serves under `names`",
                spec.cert.display()
            ));
        }
        names
    } else {
        spec.names.clone()
    };
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "the key in {} does not match the certificate in {}",
            spec.key.display(),
            spec.cert.display()
        ),
        e => format!("{}: unusable private key: {e}", spec.key.display()),
    })?;
    Ok(LoadedPair {
        names,
        key: Arc::new(key),
    })
}

/// `sluice validate`'s check of a listener's files: every problem, with its YAML path.
pub fn check_listener(index: usize, tls: &ListenerTls) -> Vec<ConfigError> {
    tls.certificates
        .iter()
        .enumerate()
        .filter_map(|(j, spec)| {
            load_pair(spec).err().map(|message| ConfigError {
                path: format!("listeners[{index}].tls.certificates[{j}]"),
                message,
            })
        })
        .collect()
}

/// The pairs in force, indexed by name.
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`: one label deeper matches.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertSet {
    /// Builds the index; where two pairs name the same host, the earlier one wins.
    fn new(pairs: &[LoadedPair]) -> Self {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for pair in pairs {
            for name in &pair.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut wildcard, suffix),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_owned()).or_insert_with(|| Arc::clone(&pair.key));
            }
        }
        Self {
            exact,
            wildcard,
            default: Arc::clone(&pairs[0].key),
        }
    }

    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else { return &self.default };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

struct Resolver(ArcSwap<CertSet>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.load().pick(hello.server_name())))
    }
}

/// The state of one configured pair.
#[derive(Debug, Clone)]
pub struct PairStatus {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// Names served.
    pub names: Vec<String>,
    /// Why the files on disk were not taken at the last reload, if they were not.
    pub error: Option<String>,
}

/// A TLS listener's handshake side: the acceptor and its reloadable certificates.
pub struct Terminator {
    listener: String,
    specs: Vec<CertificateSpec>,
    resolver: Arc<Resolver>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The pairs in force and the last reload's error of each, in file order.
    state: Mutex<Vec<(LoadedPair, Option<String>)>>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator").field("listener", &self.listener).finish()
    }
}

/// What a certificate reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Pairs whose files changed and were taken.
    pub changed: usize,
    /// Pairs whose files could not be taken, and why; they keep serving the previous pair.
    pub errors: Vec<String>,
}

impl Terminator {
    /// Loads every pair of `tls` (all must load) and builds the acceptor: TLS 1.3 and 1.2,
    /// ALPN `h2` and `http/1.1`, resumption by tickets (and by session ID for TLS 1.2).
    pub fn new(listener: &str, tls: &ListenerTls) -> Result<Arc<Self>, String> {
        let pairs = tls.certificates.iter().map(load_pair).collect::<Result<Vec<_>, _>>()?;
        if pairs.is_empty() {
            return Err("no certificates".to_owned());
        }
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(CertSet::new(&pairs))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        Ok(Arc::new(Self {
            listener: listener.to_owned(),
            specs: tls.certificates.clone(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            state: Mutex::new(pairs.into_iter().map(|p| (p, None)).collect()),
        }))
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The handshake acceptor.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Reads every pair again; pairs that changed and load are swapped in at once, pairs that
    /// fail keep the previous one. Blocking (file reads).
    pub fn reload(&self) -> ReloadOutcome {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut outcome = ReloadOutcome::default();
        for (spec, (current, error)) in self.specs.iter().zip(state.iter_mut()) {
            match load_pair(spec) {
                Ok(pair) => {
                    if !pair.same_as(current) {
                        outcome.changed += 1;
                        tracing::info!(listener = %self.listener, cert = %spec.cert.display(), names = ?pair.names, "certificate reloaded");
                        *current = pair;
                    }
                    *error = None;
                }
                Err(message) => {
                    if error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(listener = %self.listener, error = %message, "certificate not reloaded; the previous one stays in use");
                    }
                    outcome.errors.push(message.clone());
                    *error = Some(message);
                }
            }
        }
        if outcome.changed > 0 {
            let pairs: Vec<LoadedPair> = state.iter().map(|(pair, _)| pair.clone()).collect();
            self.resolver.0.store(Arc::new(CertSet::new(&pairs)));
        }
        outcome
    }

    /// Each pair as it stands.
    pub fn status(&self) -> Vec<PairStatus> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.specs
            .iter()
            .zip(state.iter())
            .map(|(spec, (pair, error))| PairStatus {
                cert: spec.cert.clone(),
                key: spec.key.clone(),
                names: pair.names.clone(),
                error: error.clone(),
            })
            .collect()
    }

    /// Watches the directories of the certificate and key files and reloads after changes,
    /// for as long as the returned watcher lives. Directories, not files: cert-manager swaps a
    /// `..data` symlink and certbot repoints `live/` links, which a watch on the file would miss.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !event.kind.is_access() => {
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "certificate watcher error"),
        })?;
        let mut dirs: Vec<PathBuf> = self
            .specs
            .iter()
            .flat_map(|spec| [&spec.cert, &spec.key])
            .map(|file| match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while tokio::time::timeout(DEBOUNCE, rx.recv())
                    .await
                    .is_ok_and(|e| e.is_some())
                {}
                let Some(this) = this.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || this.reload()).await;
            }
        });
        Ok(watcher)
    }
}

/// The TLS side of connections to one `https://` endpoint.
pub struct Origin {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    /// Whether the connection must agree on `h2` by ALPN.
    h2: bool,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("server_name", &self.server_name)
            .field("h2", &self.h2)
            .finish()
    }
}

fn builtin_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        Arc::new(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
    }))
}

impl Origin {
    /// The client side for `addr`: trusts `tls.ca_certs` if given, else the built-in Mozilla
    /// roots; verifies `tls.server_name` or the endpoint's host; offers ALPN for `protocol`.
    pub fn new(addr: &EndpointAddr, protocol: Protocol, tls: &UpstreamTls) -> Result<Self, String> {
        let roots = if tls.ca_certs.is_empty() {
            builtin_roots()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(tls.ca_certs.iter().cloned());
            Arc::new(roots)
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let h2 = protocol == Protocol::Http2;
        config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let name = tls.server_name.as_deref().unwrap_or(&addr.host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| format!("\"{name}\" is not a DNS name or IP address to verify"))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            h2,
        })
    }

    /// Runs the client handshake over `stream`.
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tls = self.connector.connect(self.server_name.clone(), stream).await?;
        if self.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other(
                "the upstream did not agree to HTTP/2 (ALPN h2); set protocol: http1 for this version",
            ));
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names() {
        assert_eq!(sni_name("App.Example.com"), Ok("app.example.com".to_owned()));
        assert_eq!(sni_name("*.example.com"), Ok("*.example.com".to_owned()));
        for bad in ["", "*", "a.*.com", "**.x.com", "127.0.0.1", "a b.com", "x_.com:443"] {
            assert!(sni_name(bad).is_err(), "{bad} must be rejected");
        }
    }
}
