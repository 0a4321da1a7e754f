//! API tokens: each configured token has a role. A presented token is
//! compared with every configured one in constant time (SHA-256 digests,
//! XOR-folded), so timing tells nothing about how much of it matched.
//! Tokens are never logged.

use sha2::{Digest, Sha256};

use crate::config::{Role, TokenSpec};
use crate::error::Error;

pub struct Auth {
    tokens: Vec<([u8; 32], Role)>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(tokens: &[TokenSpec]) -> Auth {
        Auth { tokens: tokens.iter().map(|t| (digest(t.token.as_bytes()), t.role)).collect() }
    }

    /// The role of the token in an `authorization` header value
    /// (`Bearer <token>`).
    pub fn role(&self, header: Option<&[u8]>) -> Result<Role, Error> {
        let token = header.and_then(|h| h.strip_prefix(b"Bearer ")).ok_or(Error::Unauthenticated)?;
        let presented = digest(token);
        let mut found = None;
        for (known, role) in &self.tokens {
            // No early exit: every token is compared.
            if same(known, &presented) && found.is_none() {
                found = Some(*role);
            }
        }
        found.ok_or(Error::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: Role, token: &str) -> TokenSpec {
        TokenSpec { name: "t".into(), role, token: token.into() }
    }

    #[test]
    fn roles_by_token() {
        let auth =
            Auth::new(&[spec(Role::Admin, "admin-token-0123456789"), spec(Role::Authorize, "authz-token-0123456789")]);
        assert_eq!(auth.role(Some(b"Bearer admin-token-0123456789")).unwrap(), Role::Admin);
        assert_eq!(auth.role(Some(b"Bearer authz-token-0123456789")).unwrap(), Role::Authorize);
        for bad in [&b"Bearer admin-token-012345678"[..], b"admin-token-0123456789", b"Bearer ", b""] {
            assert_eq!(auth.role(Some(bad)).unwrap_err().code(), "unauthenticated");
        }
        assert_eq!(auth.role(None).unwrap_err().code(), "unauthenticated");
        assert!(Auth::new(&[]).role(Some(b"Bearer x")).is_err());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let text = format!("{:?}", spec(Role::Admin, "admin-token-0123456789"));
        assert!(!text.contains("admin-token"), "{text}");
    }
}
