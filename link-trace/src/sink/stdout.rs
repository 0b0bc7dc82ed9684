//! The standard output sink: a batch is one `write_all`, so records are
//! never interleaved or torn. Any write error ends it (a closed pipe does
//! not come back).

use std::io::{self, Write};

use super::{Batch, DeliverError, SinkError, Transport};

pub struct Stdout {
    out: io::Stdout,
}

impl Stdout {
    pub fn new() -> Self {
        Stdout { out: io::stdout() }
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for Stdout {
    fn deliver(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        let mut out = self.out.lock();
        out.write_all(&batch.bytes)
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Closed(e).into())
    }
}
