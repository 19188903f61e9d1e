//! The cluster's secret key (`--secret-key-file`) and the AEAD around it: the leader seals a
//! secret's value before proposing it, so only ciphertext ever enters the Raft log, the state,
//! snapshots and sled; it opens them again only to hand a stage its values (never stored).
//!
//! AES-256-GCM from ring (already the TLS provider), a fresh random 96-bit nonce per value, and
//! the secret's name as associated data so a ciphertext moved to another name does not open.
//! Each sealed value carries a format number and a key id (the first 8 bytes of SHA-256 of the
//! key), so a later key rotation can tell which key sealed what.

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Format of sealed values written by this build: AES-256-GCM, name as AAD.
pub const FORMAT_AES256GCM: u32 = 1;
/// Bytes of key material.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("cannot read the secret key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secret key file {path}: {problem}; it must hold 32 random bytes as 64 hex characters \
         (make one with `head -c 32 /dev/urandom | xxd -p -c 64`)"
    )]
    Format { path: PathBuf, problem: String },
    #[error("no random numbers for a nonce")]
    Random,
    #[error("sealed with format {0}, which this build does not know")]
    UnknownFormat(u32),
    #[error("sealed with another key (key id {found}, this coordinator's is {ours})")]
    WrongKey { found: String, ours: String },
    #[error("does not decrypt (corrupt, or moved from another name)")]
    Open,
    #[error("decrypted value is not UTF-8 text")]
    NotText,
}

/// A value sealed for one name (ciphertext only: safe to print).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub format: u32,
    pub key_id: Vec<u8>,
    pub nonce: Vec<u8>,
    /// Ciphertext with the GCM tag appended.
    pub ciphertext: Vec<u8>,
}

/// The key, loaded once at start. Its `Debug` shows only the key id.
pub struct SecretKey {
    key: LessSafeKey,
    id: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &hex(&self.id))
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("{} hex characters is an odd number", text.len()));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| "it contains a character that is not hex (0-9, a-f)".to_string())
        })
        .collect()
}

impl SecretKey {
    /// Reads a key file: 64 hex characters, one trailing newline (or whitespace) ignored.
    pub fn load(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hex(text.trim_end()).map_err(|problem| SecretKeyError::Format {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// A new random key as 64 hex characters (what a key file holds).
    pub fn generate_hex() -> Result<String, SecretKeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretKeyError::Random)?;
        Ok(hex(&bytes))
    }

    /// A key from its 64 hex characters.
    pub fn from_hex(text: &str) -> Result<SecretKey, String> {
        let bytes = unhex(text)?;
        if bytes.len() != KEY_LEN {
            return Err(format!("it holds {} bytes, not {KEY_LEN}", bytes.len()));
        }
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<SecretKey, String> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| "not an AES-256 key".to_string())?;
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        Ok(SecretKey {
            key: LessSafeKey::new(unbound),
            id: digest.as_ref()[..8].to_vec(),
            rng: SystemRandom::new(),
        })
    }

    /// First 8 bytes of SHA-256 of the key.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// Seals `value` for `name` with a fresh random nonce.
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<Sealed, SecretKeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretKeyError::Random)?;
        let mut buf = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretKeyError::Random)?;
        Ok(Sealed {
            format: FORMAT_AES256GCM,
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: buf,
        })
    }

    /// Opens a value sealed for `name`; refuses another key's, another name's or a damaged one.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<String, SecretKeyError> {
        if sealed.format != FORMAT_AES256GCM {
            return Err(SecretKeyError::UnknownFormat(sealed.format));
        }
        if sealed.key_id != self.id {
            return Err(SecretKeyError::WrongKey {
                found: hex(&sealed.key_id),
                ours: hex(&self.id),
            });
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| SecretKeyError::Open)?;
        let mut buf = sealed.ciphertext.clone();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| SecretKeyError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretKeyError::NotText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn key(hex: &str) -> SecretKey {
        match SecretKey::from_hex(hex) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn seal_then_open_gives_the_value_back_and_never_holds_it_in_clear() {
        let k = key(KEY_A);
        let value = "s3cr3t-value-with-some-length";
        let a = k.seal("TOKEN", value.as_bytes()).map_err(|e| e.to_string());
        let Ok(a) = a else { panic!("{a:?}") };
        assert_eq!(a.format, FORMAT_AES256GCM);
        assert_eq!(a.key_id, k.id());
        assert_eq!(a.nonce.len(), 12);
        assert_eq!(a.ciphertext.len(), value.len() + 16, "value plus GCM tag");
        assert!(
            !a.ciphertext
                .windows(value.len())
                .any(|w| w == value.as_bytes())
        );
        assert_eq!(k.open("TOKEN", &a).ok().as_deref(), Some(value));
        // A fresh nonce every time: the same value seals differently.
        let Ok(b) = k.seal("TOKEN", value.as_bytes()) else {
            panic!("seal")
        };
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn wrong_key_wrong_name_and_damage_are_refused() {
        let (ka, kb) = (key(KEY_A), key(KEY_B));
        let Ok(sealed) = ka.seal("TOKEN", b"value") else {
            panic!("seal")
        };
        assert!(matches!(
            kb.open("TOKEN", &sealed),
            Err(SecretKeyError::WrongKey { .. })
        ));
        // Same key id but other key material (e.g. a forged id) still fails the tag check.
        let forged = Sealed {
            key_id: kb.id().to_vec(),
            ..sealed.clone()
        };
        assert!(matches!(
            kb.open("TOKEN", &forged),
            Err(SecretKeyError::Open)
        ));
        // AAD: the ciphertext does not open under another name.
        assert!(matches!(
            ka.open("OTHER", &sealed),
            Err(SecretKeyError::Open)
        ));
        let mut damaged = sealed.clone();
        damaged.ciphertext[0] ^= 1;
        assert!(matches!(
            ka.open("TOKEN", &damaged),
            Err(SecretKeyError::Open)
        ));
        let future = Sealed {
            format: 9,
            ..sealed
        };
        assert!(matches!(
            ka.open("TOKEN", &future),
            Err(SecretKeyError::UnknownFormat(9))
        ));
    }

    #[test]
    fn key_files_are_checked_and_named_in_errors() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { panic!("{dir:?}") };
        let good = dir.path().join("good.key");
        let _ = std::fs::write(&good, format!("{KEY_A}\n"));
        let loaded = SecretKey::load(&good).map_err(|e| e.to_string());
        assert_eq!(
            loaded.map(|k| k.id().to_vec()).ok(),
            Some(key(KEY_A).id().to_vec())
        );
        for (content, expect) in [
            ("abcd\n", "it holds 2 bytes, not 32"),
            ("zz", "not hex"),
            ("abc", "odd number"),
            ("", "it holds 0 bytes"),
        ] {
            let p = dir.path().join("bad.key");
            let _ = std::fs::write(&p, content);
            let err = SecretKey::load(&p).map(|_| ()).map_err(|e| e.to_string());
            let msg = err.err().unwrap_or_default();
            assert!(
                msg.contains("bad.key") && msg.contains(expect),
                "{content:?}: {msg}"
            );
        }
        let generated = SecretKey::generate_hex().unwrap_or_default();
        assert_eq!(generated.len(), 64);
        assert!(SecretKey::from_hex(&generated).is_ok());
        assert_ne!(Some(generated), SecretKey::generate_hex().ok());
        let missing = SecretKey::load(&dir.path().join("none.key")).map(|_| ());
        let msg = missing.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(msg.contains("none.key"), "{msg}");
        // Debug shows the id, never the key.
        let dbg = format!("{:?}", key(KEY_A));
        assert!(!dbg.contains(KEY_A) && dbg.contains("key_id"), "{dbg}");
    }
}
