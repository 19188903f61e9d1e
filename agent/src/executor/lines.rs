//! Cutting one output stream into log pieces: whole lines (several per piece when they arrive
//! together), over-long lines split at [`MAX_PIECE`], and a partial final line at the end. Shared
//! by the process and Docker backends so a stage's log looks the same on either.

/// Largest output piece handed to the log (an over-long line is split).
pub const MAX_PIECE: usize = 32 * 1024;

/// The bytes of one stream that do not yet end in a newline.
#[derive(Debug, Default)]
pub struct LineBuffer {
    line: Vec<u8>,
}

impl LineBuffer {
    /// Takes newly read bytes and returns the pieces that are ready to send.
    pub fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut ready = Vec::new();
        match data.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                self.line.extend_from_slice(&data[..=end]);
                let mut whole = std::mem::take(&mut self.line);
                while whole.len() > MAX_PIECE {
                    let rest = whole.split_off(MAX_PIECE);
                    ready.push(std::mem::replace(&mut whole, rest));
                }
                ready.push(whole);
                self.line.extend_from_slice(&data[end + 1..]);
            }
            None => self.line.extend_from_slice(data),
        }
        while self.line.len() >= MAX_PIECE {
            let rest = self.line.split_off(MAX_PIECE);
            ready.push(std::mem::replace(&mut self.line, rest));
        }
        ready
    }

    /// The partial final line, if any, once the stream has ended.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.line.is_empty()).then_some(self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_go_out_and_the_rest_waits() {
        let mut b = LineBuffer::default();
        assert!(b.push(b"par").is_empty());
        assert_eq!(
            b.push(b"tial\nnext\nhalf"),
            vec![b"partial\nnext\n".to_vec()]
        );
        assert_eq!(b.finish(), Some(b"half".to_vec()));

        let mut b = LineBuffer::default();
        let long = vec![b'a'; MAX_PIECE * 2 + 10];
        let pieces = b.push(&long);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() == MAX_PIECE));
        assert_eq!(b.finish().map(|l| l.len()), Some(10));
    }
}
