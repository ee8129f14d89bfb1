//! JSON Lines on stdout: one object per input, in input order.

use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Writes each value as one line (or pretty-printed, for people).
pub struct JsonLines<W: Write> {
    out: W,
    pretty: bool,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W, pretty: bool) -> Self {
        JsonLines { out, pretty }
    }

    pub fn write<T: Serialize>(&mut self, value: &T) -> Result<()> {
        if self.pretty {
            serde_json::to_writer_pretty(&mut self.out, value)?;
        } else {
            serde_json::to_writer(&mut self.out, value)?;
        }
        self.out.write_all(b"\n")?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}
