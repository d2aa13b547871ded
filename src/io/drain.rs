//! The end of a tunnel direction that a drain stopped at a frame boundary
//! (`--drain-close-frames`, see `io::frames`): the Close frame 1001 "going
//! away" to its destination, then what its source still sends, read and
//! dropped until the source's own Close has gone by or it closes. Nothing
//! after the boundary is forwarded: a Close must be the last frame an
//! endpoint sends. A direction that never stops is closed at the drain
//! deadline instead, as without the flag (`sweep::Expiry::Drain`).

use crate::io::frames::{Finish, Watch};
use crate::io::tunnel::{Ctx, Peer, PumpError};
use crate::proto::ws::tracker::{close_frame, GOING_AWAY, GOING_AWAY_REASON};

/// The rest of a direction that stopped at a boundary: the Close frame
/// 1001 "going away" to `dst` (masked towards the backend, as a client's
/// frames are), unless `src`'s own Close was forwarded already; then read and
/// drop what `src` sends, following its frames, until its Close has gone by
/// or it closes. The last direction through closes both sockets' writing
/// halves. Returns the bytes written to `dst`.
pub async fn close(
    cx: Ctx<'_>,
    w: Watch<'_>,
    src: Peer<'_>,
    dst: Peer<'_>,
) -> Result<u64, PumpError> {
    let mut sent = 0;
    if w.sends_close() {
        let mask = w.from_client().then(mask_key);
        let (frame, len) = close_frame(GOING_AWAY, GOING_AWAY_REASON, mask);
        cx.write_all(dst, &frame[..len])
            .await
            .map_err(PumpError::Write)?;
        sent = len as u64;
    }
    while !w.source_close_seen() {
        let read = cx.read_some(src, |data| w.skip(data));
        match read.await.map_err(PumpError::Read)? {
            Some(()) => cx.track.touch(),
            None => break,
        }
    }
    match w.finish() {
        Finish::OtherPending => {}
        Finish::Both => {
            cx.close_write(dst).await;
            cx.close_write(src).await;
        }
        Finish::Destination => cx.close_write(dst).await,
    }
    Ok(sent)
}

/// A masking key for the Close sent to a backend (RFC 6455 §5.3). The
/// payload is fixed, so nothing depends on the key being unpredictable;
/// the clock's nanoseconds vary it anyway.
fn mask_key() -> [u8; 4] {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0x5A5A_5A5A, |d| d.subsec_nanos()).to_le_bytes()
}
