//! What every frame source shares: the outcome of a read, capture's errors, gray pixels
//! decoded from image files and from the camera's formats (GREY, YUYV, MJPEG), and a
//! wait that a stop cuts short.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("capture.path {path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Image { path: PathBuf, reason: String },
}

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The frame was filled.
    Frame,
    /// Nothing this time (a skipped file, a camera being reopened): ask again.
    Nothing,
    /// A non-looping folder is done.
    End,
}

/// Sleeps up to `d`, waking early when `stop` is set.
pub fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// An image file inspectd can decode, by its name.
pub fn is_image_file(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg" | "bmp")
    )
}

/// Decodes an image file to 8-bit gray: (width, height, pixels).
pub fn load_gray(path: &Path) -> Result<(u32, u32, Vec<u8>), CaptureError> {
    let bytes = std::fs::read(path).map_err(|e| CaptureError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    gray_from_bytes(&bytes, path)
}

/// Decodes an image file's bytes to 8-bit gray; `path` names it in the error. The
/// decoder's memory limit refuses decompression bombs.
pub fn gray_from_bytes(bytes: &[u8], path: &Path) -> Result<(u32, u32, Vec<u8>), CaptureError> {
    let err = |reason: String| CaptureError::Image {
        path: path.to_path_buf(),
        reason,
    };
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .decode()
        .map_err(|e| err(format!("cannot decode: {e}")))?;
    let gray = img.into_luma8();
    let (w, h) = gray.dimensions();
    if w == 0 || h == 0 {
        return Err(err("empty image".into()));
    }
    Ok((w, h, gray.into_raw()))
}

/// 8-bit gray from packed YUYV (4:2:2): the Y bytes are the gray image.
pub fn gray_from_yuyv(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let n = (width * height) as usize;
    if src.len() < n * 2 {
        return Err(format!(
            "YUYV buffer of {} bytes is short for {width}x{height}",
            src.len()
        ));
    }
    dst.clear();
    dst.extend(src[..n * 2].iter().step_by(2));
    Ok(())
}

/// 8-bit gray from one MJPEG frame. A frame cut short (USB cameras deliver those) is
/// refused: it must end with the JPEG end-of-image marker, which the decoder does not check.
pub fn gray_from_mjpeg(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let end = src.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end < 2 || src[end - 2..end] != [0xFF, 0xD9] {
        return Err("MJPEG frame is cut short (no end-of-image marker)".into());
    }
    let img = image::load_from_memory_with_format(src, image::ImageFormat::Jpeg)
        .map_err(|e| format!("MJPEG frame cannot be decoded: {e}"))?
        .into_luma8();
    if img.dimensions() != (width, height) {
        return Err(format!(
            "MJPEG frame is {:?}, expected {width}x{height}",
            img.dimensions()
        ));
    }
    dst.clear();
    dst.extend_from_slice(img.as_raw());
    Ok(())
}

/// 8-bit gray from GREY: a copy, checking the size.
pub fn gray_from_grey(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let n = (width * height) as usize;
    if src.len() < n {
        return Err(format!(
            "GREY buffer of {} bytes is short for {width}x{height}",
            src.len()
        ));
    }
    dst.clear();
    dst.extend_from_slice(&src[..n]);
    Ok(())
}
