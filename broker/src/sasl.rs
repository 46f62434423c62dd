//! SASL/PLAIN authentication (optional): users from a file, checked per connection.
//!
//! With users configured, a connection may send only ApiVersions, SaslHandshake (v1,
//! mechanism `PLAIN`) and SaslAuthenticate until it has authenticated; any other
//! request closes it, as Kafka does. A wrong user or password is answered with
//! SASL_AUTHENTICATION_FAILED and the connection is closed. Without users, SaslHandshake
//! is answered with UNSUPPORTED_SASL_MECHANISM and an empty mechanism list.
//! PLAIN sends the password in clear: use it on loopback or behind TLS.

use crate::codec::{self, Decoded};
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;
use std::collections::HashMap;
use std::path::Path;

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// The users allowed in: one `user:password` a line (`#` starts a comment line).
#[derive(Debug, Clone, Default)]
pub struct Users(HashMap<String, String>);

impl Users {
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:password", i + 1));
            };
            if user.is_empty() || user.contains('\0') || password.contains('\0') {
                return Err(format!("line {}: an empty user name, or a NUL byte", i + 1));
            }
            users.insert(user.to_string(), password.to_string());
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(Users(users))
    }

    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks a PLAIN token (`authzid NUL user NUL password`); the user on success.
    pub fn check(&self, token: &[u8]) -> Option<String> {
        let mut parts = token.split(|&b| b == 0);
        let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let user = std::str::from_utf8(user).ok()?;
        let want = self.0.get(user)?;
        // Compared in full whatever the first difference, not to leak it through timing.
        let same = want.len() == password.len() && want.bytes().zip(password).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
        same.then(|| user.to_string())
    }
}

/// What the connection does with a request.
pub enum Step {
    /// Not an authentication matter: handle it.
    Pass,
    /// Send this answer and go on.
    Answer(Bytes),
    /// Send this answer, then close the connection with this reason.
    AnswerAndClose(Bytes, String),
    /// Close the connection with this reason.
    Close(String),
}

/// One connection's authentication state.
#[derive(Debug, Default)]
pub struct Session {
    handshake: bool,
    user: Option<String>,
}

impl Session {
    pub fn step(&mut self, users: Option<&Users>, decoded: &Decoded) -> Step {
        let Decoded::Request { header, api_key, request } = decoded else {
            return self.gate(users, None);
        };
        let (v, id) = (header.request_api_version, header.correlation_id);
        let answer = |body: ResponseKind| match codec::encode_response(*api_key, v, id, &body) {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(format!("cannot answer {api_key:?}: {e}")),
        };
        let step = match (&**request, users) {
            (RequestKind::SaslHandshake(_), None) => answer(ResponseKind::SaslHandshake(
                SaslHandshakeResponse::default().with_error_code(UNSUPPORTED_SASL_MECHANISM),
            ))
            .map(Step::Answer),
            (RequestKind::SaslHandshake(r), Some(_)) => {
                let plain = r.mechanism.eq_ignore_ascii_case("PLAIN");
                self.handshake = plain && self.user.is_none();
                let code = match (plain, self.user.is_none()) {
                    (false, _) => UNSUPPORTED_SASL_MECHANISM,
                    (true, false) => ILLEGAL_SASL_STATE,
                    (true, true) => 0,
                };
                let body = SaslHandshakeResponse::default()
                    .with_error_code(code)
                    .with_mechanisms(vec![StrBytes::from_static_str("PLAIN")]);
                answer(ResponseKind::SaslHandshake(body)).map(Step::Answer)
            }
            (RequestKind::SaslAuthenticate(r), Some(users)) if self.handshake => {
                self.handshake = false;
                match users.check(&r.auth_bytes) {
                    Some(user) => {
                        tracing::debug!(%user, "authenticated");
                        self.user = Some(user);
                        answer(ResponseKind::SaslAuthenticate(SaslAuthenticateResponse::default())).map(Step::Answer)
                    }
                    None => {
                        let body = SaslAuthenticateResponse::default()
                            .with_error_code(SASL_AUTHENTICATION_FAILED)
                            .with_error_message(Some(StrBytes::from_static_str("invalid user name or password")));
                        answer(ResponseKind::SaslAuthenticate(body))
                            .map(|b| Step::AnswerAndClose(b, "SASL/PLAIN authentication failed".into()))
                    }
                }
            }
            (RequestKind::SaslAuthenticate(_), _) => {
                let body = SaslAuthenticateResponse::default()
                    .with_error_code(ILLEGAL_SASL_STATE)
                    .with_error_message(Some(StrBytes::from_static_str("SaslAuthenticate without a PLAIN handshake")));
                answer(ResponseKind::SaslAuthenticate(body))
                    .map(|b| Step::AnswerAndClose(b, "SaslAuthenticate out of turn".into()))
            }
            _ => Ok(self.gate(users, Some(*api_key))),
        };
        step.unwrap_or_else(Step::Close)
    }

    /// Before authentication only ApiVersions passes.
    fn gate(&self, users: Option<&Users>, api_key: Option<ApiKey>) -> Step {
        if users.is_none() || self.user.is_some() || api_key == Some(ApiKey::ApiVersions) {
            return Step::Pass;
        }
        Step::Close(format!("{} before SASL authentication", api_key.map_or("a request".into(), |k| format!("{k:?}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_files_parse_and_plain_tokens_check() {
        let u = Users::parse("# users\nalice:s3cret\nbob:pa:ss\n\n").unwrap();
        assert_eq!(u.check(b"\0alice\0s3cret").as_deref(), Some("alice"));
        assert_eq!(u.check(b"alice\0bob\0pa:ss").as_deref(), Some("bob"));
        assert_eq!(u.check(b"\0alice\0s3creT"), None);
        assert_eq!(u.check(b"\0alice\0s3cret\0"), None);
        assert_eq!(u.check(b"\0carol\0x"), None);
        assert_eq!(u.check(b"garbage"), None);
        assert!(Users::parse("nobody").is_err());
        assert!(Users::parse("# only a comment\n").is_err());
    }
}
