//! Who a Nacos request's caller is (`docs/security.md` §4.1, `docs/nacos.md` §9): the login
//! (username and password against the token file's `[[user]]` entries), the accessToken it
//! answers, and the credentials each request carries — an `accessToken` parameter (HTTP), the
//! `accessToken` header of a gRPC request's metadata, or `username` and `password` parameters
//! (what the Node client sends with every request), checked through a cache of logins.
//!
//! A node without a token file takes any login and ignores whatever a request carries: every
//! caller may do everything, as before.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use super::model::params::RawParams;
use crate::api::{Api, Rejection};
use crate::auth::access::{ACCESS_TOKEN_TTL_S, Access, AccessKey};
use crate::auth::{Principal, Scope};
use crate::hash::HashMap;

/// Logins (argon2id, tens of ms of CPU and 19 MiB each) running at once; the others wait their
/// turn. Two: a flood of logins takes at most two cores of a node, and the node's other work
/// goes on on the rest (a small node has four).
pub const LOGINS_IN_FLIGHT_MAX: usize = 2;

/// Successful username/password checks remembered (the Node client sends its password with
/// every request: one argon2 per client and `tokenTtl`, not per request). Beyond it the
/// expired ones are dropped, and if none has expired, all of them (they are only a cache).
pub const LOGIN_CACHE_MAX: usize = 4096;

/// What a login answers (Nacos's shape).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginAnswer {
    pub access_token: String,
    pub token_ttl: u64,
    pub global_admin: bool,
    pub username: String,
}

/// The Nacos front end's authentication: shared by its HTTP and gRPC halves.
pub struct NacosAuth {
    api: Api,
    key: AccessKey,
    logins: Semaphore,
    /// SHA-256(username ‖ 0 ‖ password) → the principal it logged in as, and until when (ms).
    cache: Mutex<HashMap<[u8; 32], (Principal, u64)>>,
}

impl NacosAuth {
    pub fn new(api: Api) -> Arc<NacosAuth> {
        let key = AccessKey::new(api.node().config.cluster_token.as_deref());
        Arc::new(NacosAuth {
            api,
            key,
            logins: Semaphore::new(LOGINS_IN_FLIGHT_MAX),
            cache: Mutex::default(),
        })
    }

    /// Whether callers must prove who they are (the node has a token file).
    pub fn is_on(&self) -> bool {
        self.api.node().tokens.is_on()
    }

    /// Checks `username` and `password` (argon2id, off the async threads, at most
    /// [`LOGINS_IN_FLIGHT_MAX`] at once). `Unauthenticated` for a wrong pair and an unknown
    /// user alike.
    async fn check(&self, username: &str, password: &str) -> Result<Principal, Rejection> {
        let _turn = self
            .logins
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let node = self.api.node().clone();
        let (u, p) = (username.to_string(), password.to_string());
        tokio::task::spawn_blocking(move || node.tokens.login(&u, &p))
            .await
            .map_err(|_| Rejection::ShuttingDown)?
            .ok_or(Rejection::Unauthenticated)
    }

    /// `POST /nacos/v1/auth/login` (and `/users/login`): an accessToken for a good pair.
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginAnswer, Rejection> {
        let p = match self.check(username, password).await {
            Ok(p) => p,
            Err(e) => {
                info!("Nacos login refused");
                return Err(e);
            }
        };
        debug!(user = username, "Nacos login");
        let expires_ms = self.api.now_ms() + ACCESS_TOKEN_TTL_S * 1000;
        Ok(LoginAnswer {
            access_token: self.key.mint(&p, username, expires_ms),
            token_ttl: ACCESS_TOKEN_TTL_S,
            global_admin: p.grant().is_none_or(|g| g.rights.write == Scope::All),
            username: username.to_string(),
        })
    }

    /// Who an accessToken stands for, and until when. Without a token file: anyone, whatever
    /// was given.
    pub fn verify(&self, token: &str) -> Result<Access, Rejection> {
        if !self.is_on() {
            return Ok(Access {
                principal: Principal::anyone(),
                expires_ms: u64::MAX,
            });
        }
        self.key
            .verify(&self.api.node().tokens, token, self.api.now_ms())
            .ok_or(Rejection::Unauthenticated)
    }

    /// The caller of an HTTP request: its `accessToken` parameter, else its `username` and
    /// `password` parameters. Nothing valid on a node with a token file is `Unauthenticated`
    /// (before anything else of the request is looked at, as Nacos does).
    pub async fn caller(&self, params: &RawParams) -> Result<Principal, Rejection> {
        if !self.is_on() {
            return Ok(Principal::anyone());
        }
        if let Some(token) = params.get("accessToken").filter(|t| !t.is_empty()) {
            return self.verify(token).map(|a| a.principal);
        }
        match (params.get("username"), params.get("password")) {
            (Some(u), Some(p)) if !u.is_empty() => self.cached_login(u, p).await,
            _ => Err(Rejection::Unauthenticated),
        }
    }

    /// A username/password pair checked through the cache of logins: argon2 only for a pair
    /// not seen within `tokenTtl` (or whose entry a reload changed).
    async fn cached_login(&self, username: &str, password: &str) -> Result<Principal, Rejection> {
        let mut h = Sha256::new();
        h.update(username.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let id: [u8; 32] = h.finalize().into();
        let now = self.api.now_ms();
        let hit = self.cache.lock().unwrap().get(&id).cloned();
        if let Some((p, until)) = hit
            && now < until
        {
            match self.api.node().tokens.refresh(&p) {
                None => return Ok(p),
                Some(fresh) if fresh.is_authenticated() => {
                    self.remember(id, fresh.clone(), until);
                    return Ok(fresh);
                }
                // The entry is gone or its password changed: check the pair again.
                Some(_) => {}
            }
        }
        self.cache.lock().unwrap().remove(&id);
        let p = self.check(username, password).await?;
        self.remember(id, p.clone(), now + ACCESS_TOKEN_TTL_S * 1000);
        Ok(p)
    }

    fn remember(&self, id: [u8; 32], p: Principal, until: u64) {
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= LOGIN_CACHE_MAX && !cache.contains_key(&id) {
            let now = self.api.now_ms();
            cache.retain(|_, (_, u)| *u > now);
            if cache.len() >= LOGIN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(id, (p, until));
    }
}
