//! TLS on stream connections (rustls with the ring provider): each TLS listener's acceptor,
//! each TLS trunk's connector, and what a failed handshake means in an operator's words.
//!
//! Only TLS 1.2 and 1.3, with AES-GCM suites: Microsoft lists the ECDHE-RSA AES-GCM and
//! AES-CBC suites for TLS 1.2 (rustls has no CBC suites); the ECDHE-ECDSA AES-GCM ones are
//! kept for ECDSA certificates, and TLS 1.3's AES-GCM suites for peers that prefer 1.3.

use crate::config::{ListenerId, ListenerTls, Profile, TrunkTls};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The suites Bridgehead offers and accepts (see the module's doc).
const SUITES: [rustls::CipherSuite; 6] = [
    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
];

/// Why a handshake failed, as counted and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The other side's certificate chains to no CA Bridgehead trusts there.
    UnknownCa,
    /// The peer's certificate does not carry the trunk's server name.
    WrongName,
    /// A certificate has expired (or is not valid yet).
    Expired,
    /// No TLS version or cipher suite in common (TLS 1.1 or older, for instance).
    ProtocolVersion,
    /// The client sent no certificate to a listener that requires one.
    NoClientCertificate,
    /// The other side refused Bridgehead's own certificate.
    CertificateRefused,
    /// What came was not TLS (plain SIP over TCP on the TLS port, for instance).
    NotTls,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else (the connection closed midway, a malformed message…).
    Other,
}

impl HandshakeFailure {
    /// Every kind, in the order of the counters.
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::UnknownCa,
        HandshakeFailure::WrongName,
        HandshakeFailure::Expired,
        HandshakeFailure::ProtocolVersion,
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::CertificateRefused,
        HandshakeFailure::NotTls,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    /// The reason in log lines and counter labels.
    pub fn name(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown CA",
            HandshakeFailure::WrongName => "wrong name",
            HandshakeFailure::Expired => "expired certificate",
            HandshakeFailure::ProtocolVersion => "protocol version",
            HandshakeFailure::NoClientCertificate => "no client certificate",
            HandshakeFailure::CertificateRefused => "our certificate refused",
            HandshakeFailure::NotTls => "not TLS",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// The index of its counter.
    pub fn index(self) -> usize {
        HandshakeFailure::ALL
            .iter()
            .position(|kind| *kind == self)
            .unwrap_or(HandshakeFailure::ALL.len() - 1)
    }

    /// What a failed handshake's error says.
    pub fn of(err: &std::io::Error) -> HandshakeFailure {
        use rustls::AlertDescription as Alert;
        use rustls::Error;
        let Some(err) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
            return HandshakeFailure::Other;
        };
        match err {
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                HandshakeFailure::UnknownCa
            }
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => HandshakeFailure::WrongName,
            Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => HandshakeFailure::Expired,
            Error::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            Error::PeerIncompatible(_)
            | Error::AlertReceived(Alert::ProtocolVersion | Alert::HandshakeFailure) => {
                HandshakeFailure::ProtocolVersion
            }
            Error::AlertReceived(
                Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateExpired
                | Alert::CertificateRequired
                | Alert::UnsupportedCertificate
                | Alert::CertificateUnknown,
            ) => HandshakeFailure::CertificateRefused,
            Error::InvalidMessage(_) => HandshakeFailure::NotTls,
            _ => HandshakeFailure::Other,
        }
    }
}

/// The TLS of a profile: an acceptor per TLS listener, a connector per TLS trunk peer.
pub struct TlsContexts {
    acceptors: Vec<Option<TlsAcceptor>>,
    connectors: HashMap<(ListenerId, SocketAddr), (TlsConnector, ServerName<'static>)>,
}

impl TlsContexts {
    /// Builds every listener's and trunk's TLS from their files.
    pub fn new(profile: &Profile) -> anyhow::Result<TlsContexts> {
        let provider = Arc::new(provider());
        let mut acceptors = Vec::with_capacity(profile.listeners.len());
        for listener in &profile.listeners {
            let acceptor = match &listener.tls {
                Some(tls) => Some(TlsAcceptor::from(Arc::new(
                    server_config(tls, provider.clone())
                        .map_err(|err| anyhow::anyhow!("listener '{}': {err}", listener.name))?,
                ))),
                None => None,
            };
            acceptors.push(acceptor);
        }
        let mut connectors = HashMap::new();
        for trunk in profile
            .trunks
            .iter()
            .filter(|t| t.transport == crate::config::Transport::Tls)
        {
            let own = profile
                .listeners
                .get(trunk.listener)
                .and_then(|l| l.tls.as_ref());
            let config = client_config(&trunk.tls, own, provider.clone())
                .map_err(|err| anyhow::anyhow!("trunk '{}': {err}", trunk.name))?;
            let connector = TlsConnector::from(Arc::new(config));
            for peer in &trunk.peers {
                // The trunk's name, else the name the peer was resolved from, else its IP.
                let name = match (&trunk.tls.server_name, trunk.peer_name(*peer)) {
                    (Some(name), _) => name.clone(),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => peer.ip().to_string(),
                };
                let name = ServerName::try_from(name)
                    .map_err(|err| anyhow::anyhow!("trunk '{}': {err}", trunk.name))?;
                connectors.insert((trunk.listener, *peer), (connector.clone(), name));
            }
        }
        Ok(TlsContexts {
            acceptors,
            connectors,
        })
    }

    /// The acceptor of a TLS listener.
    pub fn acceptor(&self, listener: ListenerId) -> Option<TlsAcceptor> {
        self.acceptors.get(listener).cloned().flatten()
    }

    /// How to connect to a TLS trunk's peer: the connector and the name it must present.
    pub fn connector(
        &self,
        listener: ListenerId,
        peer: SocketAddr,
    ) -> Option<(TlsConnector, ServerName<'static>)> {
        self.connectors.get(&(listener, peer)).cloned()
    }
}

/// The client side of HTTPS (lookups' consultation services, the CDR endpoint, `ctl`): TLS
/// 1.2/1.3 with [`SUITES`], the server's certificate checked against the CAs of `ca` (PEM),
/// else the Mozilla roots.
pub fn https_client_config(ca: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let trust = TrunkTls {
        ca: ca.map(Path::to_path_buf),
        ..TrunkTls::default()
    };
    client_config(&trust, None, Arc::new(provider()))
}

/// The server side of the admin server's HTTPS: the SIP listeners' setup (TLS 1.2/1.3 with
/// [`SUITES`]) with `tls`'s certificate, offering HTTP/1.1.
pub fn https_server_config(tls: &ListenerTls) -> anyhow::Result<ServerConfig> {
    let mut config = server_config(tls, Arc::new(provider()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The ring provider cut to [`SUITES`].
fn provider() -> CryptoProvider {
    let mut provider = ring::default_provider();
    provider
        .cipher_suites
        .retain(|suite| SUITES.contains(&suite.suite()));
    provider
}

fn certificates(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in it", file.display());
    }
    Ok(certs)
}

fn roots(file: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(file)? {
        roots
            .add(cert)
            .map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?;
    }
    Ok(roots)
}

fn chain_and_key(
    tls: &ListenerTls,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = certificates(&tls.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|err| anyhow::anyhow!("{}: {err}", tls.key.display()))?;
    Ok((chain, key))
}

/// A TLS listener's server side: its certificate, and client certificates checked against
/// `client_ca` when set (mutual TLS).
fn server_config(tls: &ListenerTls, provider: Arc<CryptoProvider>) -> anyhow::Result<ServerConfig> {
    let (chain, key) = chain_and_key(tls)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(chain, key)?)
}

/// A TLS trunk's client side: the peer's certificate checked against the trunk's CAs (the
/// Mozilla roots when it names none), and the listener's certificate presented when asked.
fn client_config(
    trunk: &TrunkTls,
    own: Option<&ListenerTls>,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<ClientConfig> {
    let roots = match &trunk.ca {
        Some(ca) => roots(ca)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_webpki_verifier(verifier);
    Ok(match own {
        Some(tls) => {
            let (chain, key) = chain_and_key(tls)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    })
}
