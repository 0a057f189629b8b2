//! The envelope of the values siklus persists with serde: a partition's
//! aggregator, the merge stage's state and a replay's checkpoint.
//!
//! An enveloped value is two magic bytes, a format version, then the value
//! in postcard. Values written before the envelope existed (bare postcard)
//! read as version 0, so a store written by an older siklus opens. A version
//! newer than this build knows is an error that says so, never a silent
//! misreading.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first two bytes of an enveloped value.
const MAGIC: [u8; 2] = [0x5C, 0xE1];

/// The format version this build writes.
pub const VERSION: u8 = 1;

/// Why a persisted value cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Written by a newer siklus, in a format this build does not know.
    #[error("format version {0} is newer than this build reads ({VERSION}): upgrade siklus")]
    NewerVersion(u8),
    /// Not a value of the expected type.
    #[error("undecodable: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes `value` in the current envelope.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(value, vec![MAGIC[0], MAGIC[1], VERSION])
}

/// Decodes a value written by [`encode`], or bare postcard (version 0).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PersistError> {
    match bytes {
        [m0, m1, version, rest @ ..] if [*m0, *m1] == MAGIC => match *version {
            VERSION => postcard::from_bytes(rest).or_else(|e| {
                // Bare postcard that happens to begin like an envelope.
                postcard::from_bytes(bytes).map_err(|_| PersistError::Decode(e))
            }),
            v if v > VERSION => {
                postcard::from_bytes(bytes).map_err(|_| PersistError::NewerVersion(v))
            }
            _ => Ok(postcard::from_bytes(bytes)?),
        },
        _ => Ok(postcard::from_bytes(bytes)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<i64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "p7".into(),
            values: vec![-3, 0, 1 << 40],
        }
    }

    #[test]
    fn round_trips_in_the_envelope() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..3], &[MAGIC[0], MAGIC[1], VERSION]);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn reads_bare_postcard_written_before_the_envelope() {
        let old = postcard::to_stdvec(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&old).unwrap(), sample());
    }

    #[test]
    fn a_newer_version_is_an_error_that_says_so() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[2] = VERSION + 1;
        let e = decode::<Sample>(&bytes).unwrap_err();
        assert!(
            matches!(e, PersistError::NewerVersion(v) if v == VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("upgrade siklus"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<Sample>(&[0xFF; 3]).is_err());
    }
}
