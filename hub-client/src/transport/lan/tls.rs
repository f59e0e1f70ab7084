//! TLS 1.3 between hubs: both present their hub certificates, checked against the cluster CA,
//! the dates and the revocation list ([`PeerVerifier`]); no web PKI. Accepting and dialing.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::Signature;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use shared_proto::trust::login::Credentials;
use shared_proto::trust::{PeerCertificate, TrustError, VerifiedPeer, VerifiedRevocations};
use shared_proto::HubId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::link::run_link;
use super::{LanError, LanEvent, Shared, ALPN, HANDSHAKE_TIMEOUT, MAX_HANDSHAKING};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The hub's Ed25519 identity key as PKCS#8 v1 (RFC 8410: a fixed prefix, then the seed), the
/// private key of its certificate for TLS.
pub fn private_key(creds: &Credentials) -> PrivateKeyDer<'static> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(creds.identity.as_bytes());
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}

/// This hub's certificate chain as TLS sends it: its certificate, then the admin's that issued
/// it, if one did.
fn chain(creds: &Credentials) -> Vec<CertificateDer<'static>> {
    shared_proto::trust::chain_parts(&creds.cert_der)
        .into_iter()
        .map(|der| CertificateDer::from(der.to_vec()))
        .collect()
}

/// The TLS server settings: this hub's certificate, and the dialer's checked by `verifier`.
pub(super) fn server_config(
    creds: &Credentials,
    verifier: Arc<PeerVerifier>,
) -> Result<Arc<rustls::ServerConfig>, LanError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(creds), private_key(creds))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

impl Shared {
    /// The TLS client settings for dialing `expect`: this hub's certificate, and the peer's
    /// checked to be `expect`'s.
    pub(super) fn client_config(
        &self,
        expect: HubId,
    ) -> Result<Arc<rustls::ClientConfig>, LanError> {
        let verifier = Arc::new(self.verifier.expecting(expect));
        let creds = self.credentials.get();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain(&creds), private_key(&creds))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Checks a LAN peer's certificate: the cluster CA's signature, its dates, the revocation list,
/// not this hub's own, and (dialing) the hub id that was advertised. No web PKI.
#[derive(Debug)]
pub struct PeerVerifier {
    me: HubId,
    ca_key: ed25519_dalek::VerifyingKey,
    pub(super) revocations: Arc<RwLock<Option<VerifiedRevocations>>>,
    expect: Option<HubId>,
}

impl PeerVerifier {
    pub(super) fn new(creds: &Credentials, revocations: Option<VerifiedRevocations>) -> Self {
        PeerVerifier {
            me: creds.hub_id,
            ca_key: creds.ca_key,
            revocations: Arc::new(RwLock::new(revocations)),
            expect: None,
        }
    }

    fn expecting(&self, hub: HubId) -> PeerVerifier {
        PeerVerifier {
            me: self.me,
            ca_key: self.ca_key,
            revocations: self.revocations.clone(),
            expect: Some(hub),
        }
    }

    /// The certificate `end_entity`, issued by the admin certificate in `intermediates` if there
    /// is one, verified at `now`.
    pub fn check(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<VerifiedPeer, rustls::Error> {
        let mut der = end_entity.to_vec();
        for issuer in intermediates {
            der.extend_from_slice(issuer);
        }
        let cert = PeerCertificate::from_der(&der)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let revocations = self
            .revocations
            .read()
            .map_err(|_| rustls::Error::General("revocation list unavailable".into()))?;
        let verified = cert
            .verify(&self.ca_key, now.as_secs() * 1000, revocations.as_ref())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(match e {
                    TrustError::Expired => CertificateError::Expired,
                    TrustError::NotYetValid => CertificateError::NotValidYet,
                    TrustError::Revoked => CertificateError::Revoked,
                    TrustError::BadSignature(_) => CertificateError::BadSignature,
                    _ => CertificateError::BadEncoding,
                })
            })?;
        if verified.hub_id() == self.me {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        if self.expect.is_some_and(|e| e != verified.hub_id()) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(verified)
    }

    fn check_signature(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        let cert = PeerCertificate::from_der(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let sig = Signature::from_slice(dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        cert.identity_key()
            .verify_strict(message, &sig)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The verified peer of a finished TLS handshake.
fn peer_of(
    shared: &Shared,
    certs: Option<&[CertificateDer<'static>]>,
) -> Result<VerifiedPeer, rustls::Error> {
    let (der, intermediates) = certs
        .and_then(|c| c.split_first())
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    shared.verifier.check(der, intermediates, UnixTime::now())
}

/// Accepts links: at most [`MAX_HANDSHAKING`] TLS handshakes at once, each within
/// [`HANDSHAKE_TIMEOUT`].
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let handshaking = Arc::new(Semaphore::new(MAX_HANDSHAKING));
    loop {
        let Ok(permit) = handshaking.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("LAN: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Built for each link from the credentials now: a renewed certificate serves at once.
        let server = match server_config(&shared.credentials.get(), shared.verifier.clone()) {
            Ok(server) => server,
            Err(e) => {
                refused(&shared, addr, e.to_string()).await;
                continue;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            let tls = match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return refused(&shared, addr, e.to_string()).await,
                Err(_) => return refused(&shared, addr, "handshake timed out".into()).await,
            };
            let peer = match peer_of(&shared, tls.get_ref().1.peer_certificates()) {
                Ok(p) => p,
                Err(e) => return refused(&shared, addr, e.to_string()).await,
            };
            run_link(shared, tls.into(), addr, peer, false).await;
        });
    }
}

/// Says that a connection was refused in its handshake.
pub(super) async fn refused(shared: &Shared, addr: SocketAddr, reason: String) {
    tracing::warn!(%addr, "LAN: connection refused: {reason}");
    let _ = shared.events.send(LanEvent::Refused { addr, reason }).await;
}

pub(super) type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// Dials `hub` at `addr`: TCP, then TLS 1.3 expecting `hub`'s certificate, within
/// [`HANDSHAKE_TIMEOUT`].
pub(super) async fn connect(
    shared: &Shared,
    hub: HubId,
    addr: SocketAddr,
) -> Result<(ClientTls, VerifiedPeer), LanError> {
    let connector = tokio_rustls::TlsConnector::from(shared.client_config(hub)?);
    let name = ServerName::try_from(format!("{hub}.lan.invalid"))
        .map_err(|_| LanError::Protocol("server name"))?;
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        // A TLS failure (the peer's certificate refused, say) comes back as an I/O error.
        connector.connect(name, tcp).await.map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => LanError::Tls(tls.clone()),
                None => LanError::Io(e),
            }
        })
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| LanError::Timeout(addr))??;
    let peer = peer_of(shared, tls.get_ref().1.peer_certificates())?;
    Ok((tls, peer))
}
