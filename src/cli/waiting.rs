//! Progress of long commands on stderr: what the operation waits for (an attach, a device, a
//! snapshot), read from the progress board ([`crate::progress`]) of the process that runs it —
//! this one, or the daemon through `/Admin.Progress`.
//!
//! On a terminal a spinner line shows the latest note; otherwise a plain line is printed when the
//! note changes, and every [`REPEAT`] while it stays the same. Nothing is shown for operations
//! that end within [`QUIET`].

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::client::{self, Addr};
use crate::progress::Note;

/// Operations that end this quickly show nothing.
const QUIET: Duration = Duration::from_secs(2);
/// How often the board is read.
const TICK: Duration = Duration::from_millis(500);
/// How often an unchanged note is printed again (not on a terminal).
const REPEAT: Duration = Duration::from_secs(10);

/// Where the operation runs.
#[derive(Debug, Clone)]
pub enum Board {
    /// In this process.
    Here,
    /// In the daemon behind this admin socket.
    Daemon(Addr),
}

impl Board {
    async fn notes(&self) -> Vec<Note> {
        match self {
            Board::Here => crate::progress::notes(),
            Board::Daemon(addr) => client::call_json(addr, "Admin.Progress", None, Duration::from_secs(5))
                .await
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
        }
    }
}

/// Runs `fut`, the operation on `subject`, showing on stderr what it waits for.
pub async fn shown<F: Future>(board: &Board, subject: &str, fut: F) -> F::Output {
    let terminal = std::io::stderr().is_terminal();
    let mut fut = std::pin::pin!(fut);
    let start = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    let mut shown = Shown::default();
    let output = loop {
        tokio::select! {
            output = &mut fut => break output,
            _ = ticker.tick() => {
                if start.elapsed() < QUIET {
                    continue;
                }
                let note = board.notes().await.into_iter().rev().find(|n| n.subject == subject);
                if let Some(note) = note {
                    shown.show(&note, terminal);
                }
            }
        }
    };
    if terminal && shown.spinning {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
    output
}

/// What was last shown.
#[derive(Debug, Default)]
struct Shown {
    /// The last note printed, without its seconds, and when.
    last: Option<(String, Instant)>,
    /// A spinner line is on the terminal.
    spinning: bool,
    /// The spinner's frame.
    frame: usize,
}

impl Shown {
    fn show(&mut self, note: &Note, terminal: bool) {
        let mut err = std::io::stderr();
        if terminal {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            self.frame = (self.frame + 1) % FRAMES.len();
            let _ = write!(err, "\r\x1b[2K{} {note}", FRAMES[self.frame]);
            let _ = err.flush();
            self.spinning = true;
            return;
        }
        let key = Note { seconds: 0, ..note.clone() }.to_string();
        let due = match &self.last {
            Some((last, at)) => *last != key || at.elapsed() >= REPEAT,
            None => true,
        };
        if due {
            let _ = writeln!(err, "{note}");
            self.last = Some((key, Instant::now()));
        }
    }
}
