//! TLS: termination with SNI, ALPN, resumption and live certificate renewal; upstream TLS with a
//! custom CA. Every certificate is made here with rcgen; clients are rustls with the test's CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A certificate authority for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM, and the certificate's DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Self { issuer }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).expect("write CA");
    }
}

/// Writes `text` to `path` the way certbot and cert-manager do: a new file renamed over the old.
fn replace_file(path: &Path, text: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

fn write_leaf(dir: &Path, stem: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    replace_file(&cert, &leaf.cert_pem);
    replace_file(&key, &leaf.key_pem);
    (cert, key)
}

/// A proxy whose one listener terminates TLS, with its control plane and admin API.
struct TlsProxy {
    addr: SocketAddr,
    admin: SocketAddr,
    terminator: Arc<sluice::tls::Terminator>,
    _watcher: notify::RecommendedWatcher,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TlsProxy {
    /// `certificates`: the YAML list under `tls.certificates`; `services`: the services list.
    async fn start(certificates: &str, services: &str) -> TlsProxy {
        Self::start_with(certificates, services, "").await
    }

    /// Like [`TlsProxy::start`], with `extra` top-level YAML.
    async fn start_with(certificates: &str, services: &str, extra: &str) -> TlsProxy {
        let yaml = format!(
            "listeners: [{{ name: tls, address: 127.0.0.1:0, tls: {{ certificates: {certificates} }} }}]\n{extra}\nservices:\n{services}"
        );
        let config = sluice::config::parse(&yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
        let tls = config.listeners[0].tls.as_ref().expect("tls listener");
        let terminator = sluice::tls::Terminator::new("tls", tls).expect("certificates load");
        let watcher = terminator.watch().expect("watch certificates");
        let tcp = TcpListener::bind(config.listeners[0].address).await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let admin_tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_tcp.local_addr().expect("addr");
        let control = Arc::new(sluice::control::Control::start(config, None, None).expect("control"));
        let api = sluice::admin::Admin::new(Arc::clone(&control), None).with_tls(vec![Arc::clone(&terminator)]);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let listener = sluice::listener::Listener {
            tcp,
            tls: Some(Arc::clone(&terminator)),
        };
        let tasks = vec![
            tokio::spawn(sluice::admin::serve(admin_tcp, Arc::new(api), wait(stopped.clone()))),
            tokio::spawn(sluice::run(
                vec![listener],
                Arc::clone(control.routing()),
                wait(stopped),
            )),
        ];
        TlsProxy {
            addr,
            admin,
            terminator,
            _watcher: watcher,
            stop,
            tasks,
        }
    }

    /// `GET /api/v1/tls`.
    async fn tls_status(&self) -> serde_json::Value {
        let request = Request::get(format!("http://{}/api/v1/tls", self.admin))
            .body(empty())
            .expect("request");
        let (status, _, body) = send(&http1_client(), request).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).expect("JSON")
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            within("proxy shutdown", task).await.expect("task");
        }
    }
}

/// A rustls client config trusting `ca`, offering `alpn`, limited to `versions`.
fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA");
    let mut config = rustls::ClientConfig::builder_with_provider(sluice::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// Connects and handshakes; `sni` is a DNS name, or an IP address (then no SNI is sent).
async fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, sni: &str) -> TlsStream<TcpStream> {
    let tcp = within("connect", TcpStream::connect(addr)).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    within(
        "handshake",
        tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp),
    )
    .await
    .expect("handshake")
}

fn leaf_of(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("peer certificates")[0].clone()
}

/// An HTTP connection over an established TLS stream: HTTP/2 if ALPN agreed on it.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Conn {
    async fn over(stream: TlsStream<TcpStream>) -> Conn {
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(connection);
            Conn::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("h1 handshake");
            tokio::spawn(connection);
            Conn::H1(sender)
        }
    }

    /// GET `path` with `host`; returns the status, the version and the body.
    async fn get(&mut self, host: &str, path: &str) -> (StatusCode, Version, Bytes) {
        let response = match self {
            Conn::H1(sender) => {
                within("ready", sender.ready()).await.expect("connection usable");
                let request = Request::get(path).header("host", host).body(empty()).expect("request");
                within("response", sender.send_request(request)).await
            }
            Conn::H2(sender) => {
                let request = Request::get(format!("https://{host}{path}"))
                    .body(empty())
                    .expect("request");
                within("response", sender.send_request(request)).await
            }
        }
        .expect("response");
        let (parts, body) = response.into_parts();
        let bytes = within("body", body.collect()).await.expect("body").to_bytes();
        (parts.status, parts.version, bytes)
    }
}

/// An upstream that answers with what it saw: `proto=<x-forwarded-proto> version=<HTTP version>`.
async fn echo_upstream() -> Upstream {
    Upstream::start(|request: Request<Incoming>| async move {
        let proto = request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        Response::new(full(format!("proto={proto} version={:?}", request.version())))
    })
    .await
}

fn one_service(upstream: SocketAddr) -> String {
    service("app", "{}", &[("blue", &[upstream], 1)])
}

/// A TLS proxy with one pair for `site.test` (files in the test's own directory), in front of
/// an [`echo_upstream`].
struct Site {
    dir: PathBuf,
    ca: TestCa,
    leaf: Leaf,
    cert: PathBuf,
    key: PathBuf,
    upstream: Upstream,
    proxy: TlsProxy,
}

/// Starts a [`Site`] for the test `name`, with `extra` top-level YAML.
async fn site(name: &str, extra: &str) -> Site {
    let dir = temp_dir(name);
    let ca = TestCa::new("sluice test CA");
    let leaf = ca.leaf(&["site.test"]);
    let (cert, key) = write_leaf(&dir, "site", &leaf);
    let upstream = echo_upstream().await;
    let proxy = TlsProxy::start_with(
        &format!("[{{ cert: {}, key: {} }}]", cert.display(), key.display()),
        &one_service(upstream.addr),
        extra,
    )
    .await;
    Site {
        dir,
        ca,
        leaf,
        cert,
        key,
        upstream,
        proxy,
    }
}

#[tokio::test]
async fn sni_picks_each_names_certificate_and_the_first_is_the_default() {
    let dir = temp_dir("tls-sni");
    let ca = TestCa::new("sluice test CA");
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test", "*.b.test"]));
    let (a_cert, a_key) = write_leaf(&dir, "a", &a);
    let (b_cert, b_key) = write_leaf(&dir, "b", &b);
    // The third pair serves only the name listed, not every name of its certificate.
    let listed = ca.leaf(&["listed.test", "other.test"]);
    let (l_cert, l_key) = write_leaf(&dir, "listed", &listed);
    let upstream = echo_upstream().await;
    let proxy = TlsProxy::start(
        &format!(
            "[{{ cert: {}, key: {} }}, {{ cert: {}, key: {} }}, {{ cert: {}, key: {}, names: [Listed.Test] }}]",
            a_cert.display(),
            a_key.display(),
            b_cert.display(),
            b_key.display(),
            l_cert.display(),
            l_key.display()
        ),
        &one_service(upstream.addr),
    )
    .await;
    let config = client_config(&ca.der(), &[], BOTH);
    for (sni, want, which) in [
        ("a.test", &a.der, "a"),
        ("b.test", &b.der, "b"),
        ("deep.b.test", &b.der, "b by its wildcard"),
        ("LISTED.test", &listed.der, "the listed name"),
    ] {
        let stream = connect(proxy.addr, &config, sni).await;
        assert!(leaf_of(&stream) == *want, "SNI {sni} must get certificate {which}");
        let (status, _, body) = Conn::over(stream).await.get(sni, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body, "proto=https version=HTTP/1.1",
            "the upstream is told the client used https"
        );
    }
    // A client without SNI (an IP address) or with an unknown name gets the first pair. It
    // fails verification for those names, so look without verifying.
    for sni in ["127.0.0.1", "unknown.test", "x.y.b.test", "other.test"] {
        let presented = presented_certificate(proxy.addr, sni).await;
        assert!(
            presented == a.der,
            "{sni}: the default (first) certificate must be presented"
        );
    }
    proxy.shutdown().await;
    assert!(upstream.hits() >= 4);
}

/// The leaf a server presents for `sni`, without verifying it.
async fn presented_certificate(addr: SocketAddr, sni: &str) -> CertificateDer<'static> {
    #[derive(Debug)]
    struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = sluice::tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    leaf_of(&connect(addr, &Arc::new(config), sni).await)
}

#[tokio::test]
async fn alpn_h2_http11_and_both_tls_versions_work() {
    let Site {
        ca,
        upstream: _upstream,
        proxy,
        ..
    } = site("tls-alpn", "").await;
    // ALPN offered, TLS versions allowed; then ALPN agreed, HTTP version and TLS version seen.
    type Case = (
        &'static [&'static [u8]],
        &'static [&'static rustls::SupportedProtocolVersion],
        Option<&'static [u8]>,
        Version,
        rustls::ProtocolVersion,
    );
    let cases: [Case; 5] = [
        (
            &[b"h2", b"http/1.1"],
            BOTH,
            Some(b"h2"),
            Version::HTTP_2,
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            &[b"h2"],
            TLS12_ONLY,
            Some(b"h2"),
            Version::HTTP_2,
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            &[b"http/1.1"],
            BOTH,
            Some(b"http/1.1"),
            Version::HTTP_11,
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            &[b"http/1.1"],
            TLS12_ONLY,
            Some(b"http/1.1"),
            Version::HTTP_11,
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (&[], BOTH, None, Version::HTTP_11, rustls::ProtocolVersion::TLSv1_3),
    ];
    for (alpn, versions, agreed, http, tls) in cases {
        let stream = connect(proxy.addr, &client_config(&ca.der(), alpn, versions), "site.test").await;
        let session = stream.get_ref().1;
        assert_eq!(session.alpn_protocol(), agreed, "ALPN offered {alpn:?}");
        assert_eq!(session.protocol_version(), Some(tls));
        let mut conn = Conn::over(stream).await;
        for _ in 0..2 {
            let (status, version, body) = conn.get("site.test", "/").await;
            assert_eq!(
                (status, version),
                (StatusCode::OK, http),
                "ALPN {agreed:?} over {tls:?}"
            );
            // Upstream connections are HTTP/1.1 whatever the client speaks.
            assert_eq!(body, "proto=https version=HTTP/1.1");
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn sessions_resume_with_tls13_and_tls12() {
    let Site {
        ca,
        upstream: _upstream,
        proxy,
        ..
    } = site("tls-resume", "").await;
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        // One client config holds the client's session store, as a browser would.
        let config = client_config(&ca.der(), &[b"http/1.1"], versions);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let stream = connect(proxy.addr, &config, "site.test").await;
            kinds.push(stream.get_ref().1.handshake_kind().expect("handshake done"));
            // A request, so the client reads the TLS 1.3 tickets sent after the handshake.
            let (status, _, _) = Conn::over(stream).await.get("site.test", "/").await;
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(
            kinds,
            [HandshakeKind::Full, HandshakeKind::Resumed, HandshakeKind::Resumed],
            "{:?}",
            versions[0].version
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_told_so_and_the_proxy_keeps_serving() {
    let Site {
        ca, upstream, proxy, ..
    } = site("tls-plain", "").await;
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: site.test\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        within("answer", tcp.read_to_string(&mut answer)).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        assert!(
            answer.ends_with("This port speaks HTTPS: a plain HTTP request was sent to it.\n"),
            "{answer}"
        );
        // Bytes that are neither TLS nor HTTP: the connection is closed.
        let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        tcp.write_all(&[0, 1, 2, 3, 4, 5, 6, 7]).await.expect("write");
        let mut rest = Vec::new();
        let read = within("close", tcp.read_to_end(&mut rest)).await;
        assert!(
            read.is_err() || rest.is_empty(),
            "garbage must get nothing back: {rest:?}"
        );
        // An HTTPS client right after is served.
        let stream = connect(proxy.addr, &client_config(&ca.der(), &[], BOTH), "site.test").await;
        let (status, _, _) = Conn::over(stream).await.get("site.test", "/").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(upstream.hits(), 3, "the plain requests never reached the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn silent_clients_are_closed_before_and_after_the_handshake() {
    let Site {
        ca,
        upstream: _upstream,
        proxy,
        ..
    } = site("tls-silent", "defaults: { timeouts: { request_headers: 300ms } }").await;
    // Connects and sends nothing: no handshake ever starts.
    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut rest = Vec::new();
    let read = within("the silent connection is closed", silent.read_to_end(&mut rest)).await;
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    // Half a ClientHello (a record header promising more): the handshake never completes.
    let mut partial = TcpStream::connect(proxy.addr).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let read = within("the stalled handshake is closed", partial.read_to_end(&mut rest)).await;
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    // Handshakes, then sends no request, over HTTP/1.1 and over HTTP/2.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut stream = connect(proxy.addr, &client_config(&ca.der(), &[alpn], BOTH), "site.test").await;
        let mut buf = Vec::new();
        let _ = within("the idle TLS connection is closed", stream.read_to_end(&mut buf)).await;
        assert!(buf.is_empty(), "nothing but the close: {buf:?}");
    }
    // Half the HTTP/2 preface, then nothing.
    let mut stream = connect(proxy.addr, &client_config(&ca.der(), &[b"h2"], BOTH), "site.test").await;
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = within("the stalled preface is closed", stream.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "{buf:?}");
    // Still serving.
    let stream = connect(proxy.addr, &client_config(&ca.der(), &[], BOTH), "site.test").await;
    assert_eq!(Conn::over(stream).await.get("site.test", "/").await.0, StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_renewed_pair_is_served_live_and_a_bad_pair_keeps_the_old_one() {
    let Site {
        dir,
        ca,
        leaf: first,
        cert,
        key,
        upstream: _upstream,
        proxy,
    } = site("tls-renew", "").await;
    let config = client_config(&ca.der(), &[b"http/1.1"], BOTH);
    let old = connect(proxy.addr, &config, "site.test").await;
    assert!(leaf_of(&old) == first.der);
    let mut old = Conn::over(old).await;
    assert_eq!(old.get("site.test", "/").await.0, StatusCode::OK);

    // Renewal: a new key and certificate, written as certbot does.
    let second = ca.leaf(&["site.test"]);
    write_leaf(&dir, "site", &second);
    let mut served = first.der.clone();
    let start = tokio::time::Instant::now();
    while served != second.der {
        assert!(start.elapsed() < DEADLINE, "the renewed certificate was never served");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        served = leaf_of(&connect(proxy.addr, &config, "site.test").await);
    }
    // The connection opened before the renewal still serves requests.
    assert_eq!(old.get("site.test", "/").await.0, StatusCode::OK);
    assert!(proxy.terminator.status()[0].error.is_none());

    // Half a renewal: a new certificate whose key has not been written. It is refused, with
    // the reason, and the second pair stays in use.
    let third = ca.leaf(&["site.test"]);
    replace_file(&cert, &third.cert_pem);
    wait_until("the mismatched pair is reported", || {
        proxy.terminator.status()[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("does not match the certificate"))
    })
    .await;
    assert!(leaf_of(&connect(proxy.addr, &config, "site.test").await) == second.der);
    assert_eq!(old.get("site.test", "/").await.0, StatusCode::OK);
    // The admin API says so too.
    let status = proxy.tls_status().await;
    let pair = &status["listeners"][0]["certificates"][0];
    assert_eq!(status["listeners"][0]["listener"], "tls");
    assert_eq!(pair["names"], serde_json::json!(["site.test"]));
    assert!(
        pair["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match the certificate")),
        "{status}"
    );
    // Its key arrives: the third pair is served and the error clears.
    replace_file(&key, &third.key_pem);
    let start = tokio::time::Instant::now();
    while leaf_of(&connect(proxy.addr, &config, "site.test").await) != third.der {
        assert!(start.elapsed() < DEADLINE, "the completed pair was never served");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(proxy.terminator.status()[0].error.is_none());
    assert!(proxy.tls_status().await["listeners"][0]["certificates"][0]["error"].is_null());
    // Garbage in place of the certificate is refused too, and says why.
    replace_file(&cert, "not a certificate");
    wait_until("the unreadable certificate is reported", || {
        proxy.terminator.status()[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("holds no certificate"))
    })
    .await;
    assert!(leaf_of(&connect(proxy.addr, &config, "site.test").await) == third.der);
    assert_eq!(old.get("site.test", "/").await.0, StatusCode::OK);
    proxy.shutdown().await;
}

type Seen = (Version, String, Option<String>);

/// A TLS upstream with `leaf`, offering ALPN h2 and http/1.1; records each request's version,
/// path and the SNI its connection asked for.
struct TlsUpstream {
    addr: SocketAddr,
    /// Each request's version and path, and its connection's SNI.
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl TlsUpstream {
    async fn start(leaf: &Leaf) -> TlsUpstream {
        let chain = vec![leaf.der.clone()];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(sluice::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel();
        let (record, counted) = (Arc::clone(&seen), Arc::clone(&handshakes));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => accepted.expect("accept"),
                    _ = &mut stopped => return,
                };
                let (acceptor, record, counted) = (acceptor.clone(), Arc::clone(&record), Arc::clone(&counted));
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let sni = stream.get_ref().1.server_name().map(str::to_owned);
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        record.lock().expect("lock").push((
                            request.version(),
                            request.uri().path().to_owned(),
                            sni.clone(),
                        ));
                        async move { Ok::<_, std::convert::Infallible>(Response::new(full("secure"))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            seen,
            handshakes,
            _stop: stop,
        }
    }

    fn seen(&self, path: &str) -> Vec<(Version, Option<String>)> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .filter(|(_, p, _)| p == path)
            .map(|(v, _, sni)| (*v, sni.clone()))
            .collect()
    }
}

#[tokio::test]
async fn upstream_tls_with_a_custom_ca_over_http1_and_h2() {
    let dir = temp_dir("tls-upstream");
    let ca = TestCa::new("internal CA");
    ca.write(&dir.join("ca.pem"));
    let upstream = TlsUpstream::start(&ca.leaf(&["upstream.internal"])).await;
    let versions = |protocol: &str| {
        format!(
            "    versions:\n      blue:\n        endpoints: [\"https://{}\"]\n        protocol: {protocol}\n        tls: {{ ca: {}, server_name: upstream.internal }}\n        health_check: {{ path: /healthz, interval: 100ms, timeout: 90ms }}\n    routing: {{ weights: {{ blue: 1 }} }}\n",
            upstream.addr,
            dir.join("ca.pem").display()
        )
    };
    let services = format!(
        "  - name: h1\n    match: {{ path_prefix: /one }}\n{}  - name: h2\n    match: {{ path_prefix: /two }}\n{}",
        versions("http1"),
        versions("http2")
    );
    // With the control plane, so the health checks run.
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &format!("listeners: [{{ name: test, address: 127.0.0.1:0 }}]\nservices:\n{services}"),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    for _ in 0..3 {
        for path in ["/one", "/two"] {
            let (status, body) = get(&client, &proxy.url(path), None).await;
            assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"secure"[..]), "{path}");
        }
    }
    let sni = Some("upstream.internal".to_owned());
    assert_eq!(upstream.seen("/one"), vec![(Version::HTTP_11, sni.clone()); 3]);
    assert_eq!(
        upstream.seen("/two"),
        vec![(Version::HTTP_2, sni.clone()); 3],
        "http2 over TLS is h2 by ALPN"
    );
    // Requests reuse pooled TLS connections rather than handshaking each time, and the health
    // checks reach the upstream over TLS too.
    wait_until("health checks over TLS", || upstream.seen("/healthz").len() >= 2).await;
    assert!(upstream.seen("/healthz").iter().all(|(_, s)| *s == sni));
    let handshakes_now = upstream.handshakes.load(Ordering::SeqCst);
    let checks_now = upstream.seen("/healthz").len();
    assert!(
        handshakes_now <= checks_now + 4,
        "{handshakes_now} handshakes for 6 requests and {checks_now} checks"
    );
    proxy.shutdown().await;
}

/// Shadow copies to an `https://` shadow go out pipelined over TLS, and every answer is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_reach_an_https_shadow() {
    let dir = temp_dir("tls-shadow");
    let ca = TestCa::new("internal CA");
    ca.write(&dir.join("ca.pem"));
    let blue = Upstream::named("blue").await;
    let shadow = TlsUpstream::start(&ca.leaf(&["shadow.internal"])).await;
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &format!(
            "listeners: [{{ name: test, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    versions:\n      blue: {{ endpoints: [{}] }}\n      green:\n        endpoints: [\"https://{}\"]\n        tls: {{ ca: {}, server_name: shadow.internal }}\n    routing: {{ weights: {{ blue: 1 }} }}\n    mirror: [{{ version: green, percent: 100, max_in_flight: 1000 }}]\n",
            blue.addr,
            shadow.addr,
            dir.join("ca.pem").display()
        ),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (client, url) = (client.clone(), proxy.url("/copied"));
            tokio::spawn(async move {
                let (status, body) = get(&client, &url, None).await;
                assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"blue"[..]), "request {i}");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    wait_until("20 copies over TLS", || shadow.seen("/copied").len() == 20).await;
    let sni = Some("shadow.internal".to_owned());
    assert_eq!(shadow.seen("/copied"), vec![(Version::HTTP_11, sni); 20]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, view) = proxy.api("GET", "/api/v1/services/app", None).await;
        let mirror = &view["service"]["mirror"][0];
        if mirror["in_flight"] == 0 && mirror["sent"] == 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "copies not all answered: {mirror}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (_, metrics) = proxy.api_text("/metrics").await;
    assert!(
        metrics.contains("sluice_requests_total{service=\"app\",version=\"green\",role=\"shadow\",code=\"2xx\"} 20"),
        "every answer over TLS read as a 2xx"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refused_upstream_certificate_gives_502() {
    let dir = temp_dir("tls-refused");
    let (trusted, other) = (TestCa::new("trusted CA"), TestCa::new("unknown CA"));
    trusted.write(&dir.join("ca.pem"));
    let untrusted = TlsUpstream::start(&other.leaf(&["upstream.internal"])).await;
    let misnamed = TlsUpstream::start(&trusted.leaf(&["someone-else.internal"])).await;
    let good = TlsUpstream::start(&trusted.leaf(&["upstream.internal"])).await;
    let service = |name: &str, addr: SocketAddr, ca: bool| {
        format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    versions:\n      blue:\n        endpoints: [\"https://{addr}\"]\n        tls: {{ {}server_name: upstream.internal }}\n    routing: {{ weights: {{ blue: 1 }} }}\n",
            if ca { format!("ca: {}, ", dir.join("ca.pem").display()) } else { String::new() }
        )
    };
    let services = [
        service("untrusted", untrusted.addr, true),
        service("misnamed", misnamed.addr, true),
        // Without `ca`, the built-in roots: a private CA is not among them.
        service("builtin", good.addr, false),
        service("good", good.addr, true),
    ]
    .concat();
    let proxy = proxy(&services).await;
    let client = http1_client();
    for name in ["untrusted", "misnamed", "builtin"] {
        let (status, body) = get(&client, &proxy.url(&format!("/{name}")), None).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}: {body:?}");
    }
    assert!(untrusted.seen("/untrusted").is_empty() && misnamed.seen("/misnamed").is_empty());
    assert!(
        good.seen("/builtin").is_empty(),
        "no request may cross an unverified connection"
    );
    let (status, body) = get(&client, &proxy.url("/good"), None).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"secure"[..]));
    proxy.shutdown().await;
}

#[tokio::test]
async fn https_webhooks_are_verified_against_their_ca() {
    let dir = temp_dir("tls-webhook");
    let (ca, other) = (TestCa::new("gate CA"), TestCa::new("unknown CA"));
    let gate = TlsUpstream::start(&ca.leaf(&["127.0.0.1"])).await;
    let url: http::Uri = format!("https://{}/gate", gate.addr).parse().expect("url");
    let timeout = std::time::Duration::from_secs(5);
    let passed = sluice::rollout::call_webhook(&url, timeout, &[ca.der()], "{}".into()).await;
    assert_eq!(passed, Ok(200));
    assert_eq!(
        gate.seen("/gate"),
        vec![(Version::HTTP_11, None)],
        "no SNI for an IP address"
    );
    for roots in [vec![other.der()], Vec::new()] {
        let refused = sluice::rollout::call_webhook(&url, timeout, &roots, "{}".into()).await;
        let why = refused.expect_err("an unknown issuer must not pass");
        assert!(
            why.contains("TLS handshake with https://127.0.0.1:") && why.contains("UnknownIssuer"),
            "{why}"
        );
    }
    assert_eq!(
        gate.seen("/gate").len(),
        1,
        "nothing was sent over the refused connections"
    );
    // The configuration reads the CA file of an https webhook.
    ca.write(&dir.join("gate-ca.pem"));
    let yaml = format!(
        "listeners: [{{ name: p, address: 127.0.0.1:0 }}]\nservices:\n  - name: s\n    versions: {{ blue: {{ endpoints: [127.0.0.1:1] }}, canary: {{ endpoints: [127.0.0.1:2] }} }}\n    rollout:\n      baseline: blue\n      canary: canary\n      steps: [{{ webhook: {{ url: \"{url}\", ca: {} }} }}]\n",
        dir.join("gate-ca.pem").display()
    );
    let config = sluice::config::parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let steps = &config.services[0].rollout.as_ref().expect("rollout").steps;
    assert!(matches!(&steps[0], sluice::config::Step::Webhook { ca_certs, .. } if *ca_certs == vec![ca.der()]));
}

/// HTTP/1.1 over TLS is read by hyper, so the proxy's own head rules (one `Host`, a single
/// `chunked` coding) are applied by the handler: the same `400` as on a plain port, and the
/// upstream hears nothing.
#[tokio::test]
async fn heads_hyper_lets_through_are_refused_over_tls_too() {
    let Site {
        ca, upstream, proxy, ..
    } = site("tls-heads", "").await;
    let post = "POST / HTTP/1.1\r\nHost: site.test\r\n";
    let cases = [
        (
            "two Host lines",
            "GET / HTTP/1.1\r\nHost: site.test\r\nHost: other.test\r\n\r\n".to_owned(),
        ),
        ("no Host", "GET / HTTP/1.1\r\n\r\n".to_owned()),
        (
            "a coding before chunked",
            format!("{post}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "chunked twice",
            format!("{post}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ),
    ];
    for (case, raw) in &cases {
        let mut stream = connect(proxy.addr, &client_config(&ca.der(), &[b"http/1.1"], BOTH), "site.test").await;
        stream.write_all(raw.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = within(case, stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{case}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{case}: {answer}"
        );
    }
    assert_eq!(upstream.hits(), 0, "a refused head never reaches the upstream");
    proxy.shutdown().await;
}

/// The value of an unlabelled series in the proxy's `/metrics`.
async fn tls_metric(proxy: &TlsProxy, name: &str) -> u64 {
    let request = Request::get(format!("http://{}/metrics", proxy.admin))
        .body(empty())
        .expect("request");
    let (status, _, body) = send(&http1_client(), request).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .parse()
        .expect("a number")
}

/// Connects, handshakes and sends one GET over HTTP/1.1 without failing the test: `None` when
/// any of it fails (the proxy closed the connection).
async fn try_get(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Option<StatusCode> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("site.test").expect("server name");
    let stream = within(
        "handshake",
        tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp),
    )
    .await
    .ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", "site.test")
        .body(empty())
        .expect("request");
    let response = within("response", sender.send_request(request)).await.ok()?;
    let status = response.status();
    within("body", response.into_body().collect()).await.ok()?;
    Some(status)
}

/// `max_connections` holds on a TLS listener, counted from accept, so a connection still in
/// its handshake holds a slot: past the limit a connection is closed before its handshake, is
/// counted as refused and reaches no upstream; the open ones keep working, and a freed slot is
/// taken by the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_on_a_tls_listener_and_a_freed_slot_is_reused() {
    let Site {
        ca, upstream, proxy, ..
    } = site("tls-max-connections", "defaults: { limits: { max_connections: 2 } }").await;
    let h2 = client_config(&ca.der(), &[b"h2"], BOTH);
    let h1 = client_config(&ca.der(), &[b"http/1.1"], BOTH);
    let stream = connect(proxy.addr, &h2, "site.test").await;
    let mut open = Conn::over(stream).await;
    assert_eq!(open.get("site.test", "/").await.0, StatusCode::OK);
    // A client that connected and has not started its handshake holds the second slot.
    let silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tls_metric(&proxy, "sluice_connections_open").await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent connection was never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // The third: closed before its handshake.
    for protocol in [&h1, &h2] {
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let name = ServerName::try_from("site.test").expect("server name");
        let handshake = within(
            "the refused handshake ends",
            tokio_rustls::TlsConnector::from(Arc::clone(protocol)).connect(name, tcp),
        )
        .await;
        assert!(
            handshake.is_err(),
            "a connection past the limit must not complete a handshake"
        );
    }
    assert_eq!(tls_metric(&proxy, "sluice_connections_refused_total").await, 2);
    assert_eq!(upstream.hits(), 1, "the refused connections reached no upstream");

    // The open connection is untouched.
    assert_eq!(open.get("site.test", "/").await.0, StatusCode::OK);
    assert_eq!(upstream.hits(), 2);

    // The silent client leaves: its slot goes to the next client (once the proxy has seen the
    // close, so new connections are tried until one is served).
    drop(silent);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = try_get(proxy.addr, &h1).await {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot was never reused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.hits(), 3);
    assert_eq!(open.get("site.test", "/").await.0, StatusCode::OK);
    assert_eq!(upstream.hits(), 4);
    proxy.shutdown().await;
}
