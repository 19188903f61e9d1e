//! Encoding of log chunks on the wire and in the Raft log. Stage output is mostly text that
//! repeats itself (timestamps, paths, test names), and every byte of it is sent to the leader,
//! replicated to each follower and fsynced on every node, so agents compress it with LZ4 (fast
//! enough not to slow a stage down). Nodes store chunks still encoded and decompress them only
//! when they are read (`FollowLogs`).

/// `LogChunk.encoding`: the bytes as printed.
pub const RAW: u32 = 0;
/// `LogChunk.encoding`: an LZ4 block with its uncompressed length prepended (u32 LE).
pub const LZ4: u32 = 1;

/// Below this size compression is not worth a header.
const MIN_COMPRESS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogCodecError {
    #[error("unknown log chunk encoding {0} (known: 0 raw, 1 lz4)")]
    UnknownEncoding(u32),
    #[error("LZ4 chunk claims {claimed} bytes uncompressed, over the log chunk limit of {limit}")]
    TooLarge { claimed: usize, limit: usize },
    #[error("LZ4 chunk does not decode: {0}")]
    Corrupt(String),
}

/// Returns `data` compressed when that saves at least a tenth, else as is, with its encoding.
pub fn encode(data: &[u8]) -> (Vec<u8>, u32) {
    if data.len() >= MIN_COMPRESS {
        let packed = lz4_flex::compress_prepend_size(data);
        if packed.len() <= data.len() - data.len() / 10 {
            return (packed, LZ4);
        }
    }
    (data.to_vec(), RAW)
}

/// The bytes a chunk stands for, refusing more than `limit` of them (a small chunk must not
/// expand into gigabytes).
pub fn decode(data: &[u8], encoding: u32, limit: usize) -> Result<Vec<u8>, LogCodecError> {
    match encoding {
        RAW => Ok(data.to_vec()),
        LZ4 => {
            let (claimed, _) = lz4_flex::block::uncompressed_size(data)
                .map_err(|e| LogCodecError::Corrupt(e.to_string()))?;
            if claimed > limit {
                return Err(LogCodecError::TooLarge { claimed, limit });
            }
            lz4_flex::decompress_size_prepended(data)
                .map_err(|e| LogCodecError::Corrupt(e.to_string()))
        }
        other => Err(LogCodecError::UnknownEncoding(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_compressed_and_comes_back_exactly() {
        let text: Vec<u8> = (0..500)
            .flat_map(|i| {
                format!("2026-11-28T12:00:{:02}Z INFO test case_{i} ok\n", i % 60).into_bytes()
            })
            .collect();
        let (packed, enc) = encode(&text);
        assert_eq!(enc, LZ4);
        assert!(
            packed.len() * 3 < text.len(),
            "{} of {}",
            packed.len(),
            text.len()
        );
        assert_eq!(decode(&packed, enc, 1 << 20).unwrap(), text);
    }

    #[test]
    fn small_or_incompressible_data_stays_raw() {
        let (short, enc) = encode(b"hello\n");
        assert_eq!((short.as_slice(), enc), (&b"hello\n"[..], RAW));
        // xorshift bytes do not compress.
        let mut x = 88172645463325252u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(encode(&noise), (noise.clone(), RAW));
    }

    #[test]
    fn bombs_garbage_and_unknown_encodings_are_refused() {
        let (packed, _) = encode(&vec![b'a'; 64 * 1024]);
        assert_eq!(
            decode(&packed, LZ4, 1024),
            Err(LogCodecError::TooLarge {
                claimed: 64 * 1024,
                limit: 1024
            })
        );
        assert!(matches!(
            decode(&[5, 0, 0, 0, 0xff, 0xff], LZ4, 1024),
            Err(LogCodecError::Corrupt(_))
        ));
        assert_eq!(decode(b"x", 7, 10), Err(LogCodecError::UnknownEncoding(7)));
    }
}
