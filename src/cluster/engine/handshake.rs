//! The checks of the peer handshake (see [`crate::cluster::auth`] for the exchange), both
//! sides, as plain state: each takes the message received and answers the message to send or
//! why the peer is refused. Nonces are passed in, so the same exchange can be replayed in tests.

use thiserror::Error;

use crate::cluster::auth::{self, Identity};
use crate::model::NodeId;
use crate::wire::{
    MAC_LEN, Message, NONCE_LEN, Opcode, PROTOCOL_VERSION, PeerChallenge, PeerHello,
};

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("expected {expected:?}, got {got:?}")]
    Unexpected { expected: Opcode, got: Opcode },
    #[error("peer speaks version {theirs}, this node {ours}")]
    VersionTooOld { theirs: u8, ours: u8 },
    #[error("peer is configured with a different member list")]
    OtherCluster,
    #[error("peer claims node id {id}, which is not a valid peer id here")]
    InvalidPeerId { id: NodeId },
    #[error("peer does not know the cluster token")]
    BadProof,
    /// The other side refused with an Error frame, saying why.
    #[error("{reason}")]
    Refused { reason: String },
}

/// A dialer got `got` where it expected `expected`: the acceptor's refusal, or a confusion.
fn unexpected(expected: Opcode, got: &Message) -> HandshakeError {
    match got {
        Message::Error(e) => HandshakeError::Refused {
            reason: e.message.to_string(),
        },
        other => HandshakeError::Unexpected {
            expected,
            got: other.opcode(),
        },
    }
}

/// The accepting side: PeerHello in, PeerChallenge out; PeerAuth in, the peer's id out.
pub struct Acceptor<'a> {
    me: &'a Identity,
    nonce: [u8; NONCE_LEN],
    hello: Option<PeerHello>,
}

impl<'a> Acceptor<'a> {
    /// `nonce`: fresh for every connection ([`auth::nonce`]).
    pub fn new(me: &'a Identity, nonce: [u8; NONCE_LEN]) -> Acceptor<'a> {
        Acceptor {
            me,
            nonce,
            hello: None,
        }
    }

    /// The dialer's first message; the challenge to answer it with.
    pub fn on_hello(&mut self, msg: Message) -> Result<Message, HandshakeError> {
        let Message::PeerHello(hello) = msg else {
            return Err(HandshakeError::Unexpected {
                expected: Opcode::PeerHello,
                got: msg.opcode(),
            });
        };
        if hello.max_version < PROTOCOL_VERSION {
            return Err(HandshakeError::VersionTooOld {
                theirs: hello.max_version,
                ours: PROTOCOL_VERSION,
            });
        }
        if hello.cluster_hash != self.me.cluster_hash {
            return Err(HandshakeError::OtherCluster);
        }
        if hello.node_id == self.me.node_id || hello.node_id == 0 {
            return Err(HandshakeError::InvalidPeerId { id: hello.node_id });
        }
        let mac = auth::mac(
            &self.me.token,
            auth::ACCEPTOR_LABEL,
            &hello.nonce,
            &self.nonce,
            self.me.node_id,
        );
        self.hello = Some(hello);
        Ok(Message::PeerChallenge(PeerChallenge {
            node_id: self.me.node_id,
            nonce: self.nonce,
            mac,
        }))
    }

    /// The dialer's proof; its node id when the proof is good (answer it with `Ack(0)`).
    pub fn on_auth(&self, msg: Message) -> Result<NodeId, HandshakeError> {
        let Message::PeerAuth(proof) = msg else {
            return Err(HandshakeError::Unexpected {
                expected: Opcode::PeerAuth,
                got: msg.opcode(),
            });
        };
        let Some(hello) = &self.hello else {
            return Err(HandshakeError::Unexpected {
                expected: Opcode::PeerHello,
                got: Opcode::PeerAuth,
            });
        };
        let good = auth::verify(
            &self.me.token,
            auth::DIALER_LABEL,
            &self.nonce,
            &hello.nonce,
            hello.node_id,
            &proof,
        );
        if !good {
            return Err(HandshakeError::BadProof);
        }
        Ok(hello.node_id)
    }
}

/// The dialing side: PeerHello out; PeerChallenge in, PeerAuth out; Ack in.
pub struct Dialing<'a> {
    me: &'a Identity,
    nonce: [u8; NONCE_LEN],
}

impl<'a> Dialing<'a> {
    /// `nonce`: fresh for every connection ([`auth::nonce`]).
    pub fn new(me: &'a Identity, nonce: [u8; NONCE_LEN]) -> Dialing<'a> {
        Dialing { me, nonce }
    }

    pub fn hello(&self) -> Message {
        Message::PeerHello(PeerHello {
            node_id: self.me.node_id,
            max_version: PROTOCOL_VERSION,
            cluster_hash: self.me.cluster_hash,
            nonce: self.nonce,
        })
    }

    /// The acceptor's challenge; its node id and the proof to answer with, when it proved
    /// that it knows the token.
    pub fn on_challenge(&self, msg: Message) -> Result<(NodeId, Message), HandshakeError> {
        let Message::PeerChallenge(ch) = msg else {
            return Err(unexpected(Opcode::PeerChallenge, &msg));
        };
        let good = auth::verify(
            &self.me.token,
            auth::ACCEPTOR_LABEL,
            &self.nonce,
            &ch.nonce,
            ch.node_id,
            &ch.mac,
        );
        if !good {
            return Err(HandshakeError::BadProof);
        }
        let proof: [u8; MAC_LEN] = auth::mac(
            &self.me.token,
            auth::DIALER_LABEL,
            &ch.nonce,
            &self.nonce,
            self.me.node_id,
        );
        Ok((ch.node_id, Message::PeerAuth(proof)))
    }

    /// The acceptor's last word: Ack when it let this node in.
    pub fn on_answer(&self, msg: Message) -> Result<(), HandshakeError> {
        match msg {
            Message::Ack(_) => Ok(()),
            other => Err(unexpected(Opcode::Ack, &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ErrorBody, ErrorCode};

    fn identity(node_id: NodeId, token: &str, cluster_hash: u64) -> Identity {
        Identity {
            node_id,
            cluster_hash,
            token: token.as_bytes().to_vec(),
        }
    }

    /// Runs a whole handshake; the acceptor's verdict (the dialer's id) or the first refusal,
    /// and which side refused.
    fn handshake(
        dialer: &Identity,
        acceptor: &Identity,
    ) -> Result<NodeId, (&'static str, HandshakeError)> {
        let d = Dialing::new(dialer, [1; NONCE_LEN]);
        let mut a = Acceptor::new(acceptor, [2; NONCE_LEN]);
        let challenge = a.on_hello(d.hello()).map_err(|e| ("acceptor", e))?;
        let (acceptor_id, proof) = d.on_challenge(challenge).map_err(|e| ("dialer", e))?;
        assert_eq!(acceptor_id, acceptor.node_id);
        let id = a.on_auth(proof).map_err(|e| ("acceptor", e))?;
        d.on_answer(Message::Ack(0)).map_err(|e| ("dialer", e))?;
        Ok(id)
    }

    #[test]
    fn peers_let_each_other_in_only_with_the_same_token_members_and_distinct_ids() {
        let a = identity(1, "cluster-token", 77);
        // (dialer, outcome)
        let table = [
            (identity(2, "cluster-token", 77), Ok(2)),
            // The acceptor proves itself first: a dialer with another token refuses it.
            (
                identity(2, "other-token!", 77),
                Err(("dialer", HandshakeError::BadProof)),
            ),
            (
                identity(2, "cluster-token", 78),
                Err(("acceptor", HandshakeError::OtherCluster)),
            ),
            (
                identity(1, "cluster-token", 77),
                Err(("acceptor", HandshakeError::InvalidPeerId { id: 1 })),
            ),
            (
                identity(0, "cluster-token", 77),
                Err(("acceptor", HandshakeError::InvalidPeerId { id: 0 })),
            ),
        ];
        for (i, (dialer, want)) in table.into_iter().enumerate() {
            assert_eq!(handshake(&dialer, &a), want, "row {i}");
        }
    }

    #[test]
    fn an_acceptor_refuses_a_proof_made_with_another_token() {
        // A dialer that skips checking the challenge and answers with a MAC of its own token.
        let a = identity(1, "cluster-token", 77);
        let mut acc = Acceptor::new(&a, [2; NONCE_LEN]);
        let wrong = identity(2, "guessed-token", 77);
        let Ok(Message::PeerChallenge(ch)) =
            acc.on_hello(Dialing::new(&wrong, [1; NONCE_LEN]).hello())
        else {
            panic!("the hello is fine");
        };
        let forged = auth::mac(
            &wrong.token,
            auth::DIALER_LABEL,
            &ch.nonce,
            &[1; NONCE_LEN],
            2,
        );
        assert_eq!(
            acc.on_auth(Message::PeerAuth(forged)),
            Err(HandshakeError::BadProof)
        );
        // A proof replayed from another connection (another acceptor nonce) fails too.
        let right = identity(2, "cluster-token", 77);
        let replayed = auth::mac(
            &right.token,
            auth::DIALER_LABEL,
            &[9; NONCE_LEN],
            &[1; NONCE_LEN],
            2,
        );
        assert_eq!(
            acc.on_auth(Message::PeerAuth(replayed)),
            Err(HandshakeError::BadProof)
        );
    }

    #[test]
    fn messages_out_of_turn_are_refused() {
        let me = identity(1, "cluster-token", 77);
        let mut a = Acceptor::new(&me, [2; NONCE_LEN]);
        assert_eq!(
            a.on_hello(Message::Ping(1)),
            Err(HandshakeError::Unexpected {
                expected: Opcode::PeerHello,
                got: Opcode::Ping
            })
        );
        assert_eq!(
            a.on_auth(Message::PeerAuth([0; MAC_LEN])),
            Err(HandshakeError::Unexpected {
                expected: Opcode::PeerHello,
                got: Opcode::PeerAuth
            }),
            "a proof before any hello"
        );
        let old = Message::PeerHello(PeerHello {
            node_id: 2,
            max_version: 0,
            cluster_hash: 77,
            nonce: [1; NONCE_LEN],
        });
        assert_eq!(
            a.on_hello(old),
            Err(HandshakeError::VersionTooOld {
                theirs: 0,
                ours: PROTOCOL_VERSION
            })
        );
        // The dialer hears why it was refused.
        let d = Dialing::new(&me, [1; NONCE_LEN]);
        let refusal = Message::Error(ErrorBody::new(ErrorCode::Unauthorized, "go away"));
        assert_eq!(
            d.on_challenge(refusal.clone()),
            Err(HandshakeError::Refused {
                reason: "go away".into()
            })
        );
        assert_eq!(
            d.on_answer(refusal),
            Err(HandshakeError::Refused {
                reason: "go away".into()
            })
        );
        assert_eq!(
            d.on_answer(Message::Pong(3)),
            Err(HandshakeError::Unexpected {
                expected: Opcode::Ack,
                got: Opcode::Pong
            })
        );
    }
}
