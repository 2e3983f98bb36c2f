//! Video formats as numpy sees them: a `GstVideoFormat` value's name, and for each plane
//! the array shape, element type and default layout (GStreamer's `GstVideoInfo` strides
//! and offsets, so that a frame we lay out is one any GStreamer element reads as is).
//! Pure: the tests compare every entry with `GstVideoInfo` (python/tests/test_formats.py).

/// Element type of a plane's array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    U8,
    U16Le,
    U16Be,
}

impl Sample {
    pub fn size(self) -> usize {
        match self {
            Sample::U8 => 1,
            Sample::U16Le | Sample::U16Be => 2,
        }
    }
}

/// How one plane's rows and columns follow from the frame's width and height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneShape {
    /// The plane has `ceil(width / x_sub)` columns and `ceil(height / y_sub)` rows.
    pub x_sub: u32,
    pub y_sub: u32,
    /// Samples per column (1 for a grey or Y plane, 2 for interleaved UV, 3 for RGB).
    pub channels: u32,
}

impl PlaneShape {
    pub fn columns(&self, width: u32) -> usize {
        width.div_ceil(self.x_sub) as usize
    }
    pub fn rows(&self, height: u32) -> usize {
        height.div_ceil(self.y_sub) as usize
    }
}

/// One video format we can turn into arrays.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub name: &'static str,
    /// The `GstVideoFormat` value.
    pub id: u32,
    pub sample: Sample,
    pub planes: &'static [PlaneShape],
    /// GStreamer rounds the height up to a multiple of this before it places the
    /// chroma planes (2 for the 4:2:0 formats).
    pub height_align: u32,
}

const fn p(x_sub: u32, y_sub: u32, channels: u32) -> PlaneShape {
    PlaneShape { x_sub, y_sub, channels }
}

const fn f(name: &'static str, id: u32, sample: Sample, planes: &'static [PlaneShape], height_align: u32) -> Format {
    Format { name, id, sample, planes, height_align }
}

use Sample::*;

/// Every format `planes()` understands; others are reachable through `memory()`.
pub const FORMATS: &[Format] = &[
    f("I420", 2, U8, &[p(1, 1, 1), p(2, 2, 1), p(2, 2, 1)], 2),
    f("YV12", 3, U8, &[p(1, 1, 1), p(2, 2, 1), p(2, 2, 1)], 2),
    // 4:2:2 packed: one (Y, U|V) pair per pixel, the width rounded up to even.
    f("YUY2", 4, U8, &[p(1, 1, 2)], 1),
    f("UYVY", 5, U8, &[p(1, 1, 2)], 1),
    f("AYUV", 6, U8, &[p(1, 1, 4)], 1),
    f("RGBx", 7, U8, &[p(1, 1, 4)], 1),
    f("BGRx", 8, U8, &[p(1, 1, 4)], 1),
    f("xRGB", 9, U8, &[p(1, 1, 4)], 1),
    f("xBGR", 10, U8, &[p(1, 1, 4)], 1),
    f("RGBA", 11, U8, &[p(1, 1, 4)], 1),
    f("BGRA", 12, U8, &[p(1, 1, 4)], 1),
    f("ARGB", 13, U8, &[p(1, 1, 4)], 1),
    f("ABGR", 14, U8, &[p(1, 1, 4)], 1),
    f("RGB", 15, U8, &[p(1, 1, 3)], 1),
    f("BGR", 16, U8, &[p(1, 1, 3)], 1),
    f("Y41B", 17, U8, &[p(1, 1, 1), p(4, 1, 1), p(4, 1, 1)], 1),
    f("Y42B", 18, U8, &[p(1, 1, 1), p(2, 1, 1), p(2, 1, 1)], 1),
    f("YVYU", 19, U8, &[p(1, 1, 2)], 1),
    f("Y444", 20, U8, &[p(1, 1, 1), p(1, 1, 1), p(1, 1, 1)], 1),
    f("NV12", 23, U8, &[p(1, 1, 1), p(2, 2, 2)], 2),
    f("NV21", 24, U8, &[p(1, 1, 1), p(2, 2, 2)], 2),
    f("GRAY8", 25, U8, &[p(1, 1, 1)], 1),
    f("GRAY16_BE", 26, U16Be, &[p(1, 1, 1)], 1),
    f("GRAY16_LE", 27, U16Le, &[p(1, 1, 1)], 1),
    f("v308", 28, U8, &[p(1, 1, 3)], 1),
    f("NV16", 51, U8, &[p(1, 1, 1), p(2, 1, 2)], 1),
    f("NV24", 52, U8, &[p(1, 1, 1), p(1, 1, 2)], 1),
    f("NV61", 60, U8, &[p(1, 1, 1), p(2, 1, 2)], 1),
    f("P010_10LE", 62, U16Le, &[p(1, 1, 1), p(2, 2, 2)], 2),
    f("IYU2", 63, U8, &[p(1, 1, 3)], 1),
    f("VYUY", 64, U8, &[p(1, 1, 2)], 1),
];

fn is_packed_422(format: &Format) -> bool {
    matches!(format.name, "YUY2" | "UYVY" | "YVYU" | "VYUY")
}

pub fn by_id(id: u32) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.id == id)
}

/// Case-insensitive: "nv12" and "NV12" both work.
pub fn by_name(name: &str) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

pub fn names() -> String {
    FORMATS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

fn round_up(value: usize, to: usize) -> usize {
    value.div_ceil(to) * to
}

/// What one plane of a `width`×`height` frame looks like as an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneArray {
    pub rows: usize,
    pub columns: usize,
    pub channels: usize,
}

impl PlaneArray {
    /// Bytes of one row's pixels (the stride may be more).
    pub fn row_bytes(&self, sample: Sample) -> usize {
        self.columns * self.channels * sample.size()
    }
    /// The numpy shape: (rows, columns) for one channel, (rows, columns, channels) otherwise.
    pub fn shape(&self) -> Vec<usize> {
        if self.channels == 1 {
            vec![self.rows, self.columns]
        } else {
            vec![self.rows, self.columns, self.channels]
        }
    }
}

impl Format {
    pub fn plane_array(&self, plane: usize, width: u32, height: u32) -> PlaneArray {
        let shape = self.planes[plane];
        let columns = if is_packed_422(self) { round_up(width as usize, 2) } else { shape.columns(width) };
        PlaneArray { rows: shape.rows(height), columns, channels: shape.channels as usize }
    }

    /// GStreamer's default layout for a `width`×`height` frame: (offsets, strides, size).
    pub fn default_layout(&self, width: u32, height: u32) -> (Vec<u64>, Vec<i32>, u64) {
        let mut offsets = Vec::with_capacity(self.planes.len());
        let mut strides = Vec::with_capacity(self.planes.len());
        let mut offset = 0usize;
        let aligned_height = round_up(height as usize, self.height_align as usize) as u32;
        for plane in 0..self.planes.len() {
            let array = self.plane_array(plane, width, height);
            let stride = match (self.name, plane) {
                // GStreamer derives these chroma strides from the rounded luma width.
                ("Y41B", 1 | 2) => round_up(round_up(width as usize, 4) / 4, 4),
                ("NV12" | "NV21" | "NV16" | "NV61", 1) => round_up(width as usize, 4),
                ("P010_10LE", 1) => round_up(width as usize * 2, 4),
                _ => round_up(array.row_bytes(self.sample), 4),
            };
            offsets.push(offset as u64);
            strides.push(stride as i32);
            let rows = self.plane_array(plane, width, aligned_height).rows;
            offset += stride * rows;
        }
        (offsets, strides, offset as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values read off GStreamer 1.22's GstVideoInfo for 17x11 (python/tests/test_formats.py
    /// checks every format against the real thing).
    #[test]
    fn default_layouts_match_gstreamer_for_odd_sizes() {
        let layout = |name| by_name(name).unwrap().default_layout(17, 11);
        assert_eq!(layout("NV12"), (vec![0, 240], vec![20, 20], 360));
        assert_eq!(layout("I420"), (vec![0, 240, 312], vec![20, 12, 12], 384));
        assert_eq!(layout("Y42B"), (vec![0, 220, 352], vec![20, 12, 12], 484));
        assert_eq!(layout("Y41B"), (vec![0, 220, 308], vec![20, 8, 8], 396));
        assert_eq!(layout("NV24"), (vec![0, 220], vec![20, 36], 616));
        assert_eq!(layout("YUY2"), (vec![0], vec![36], 396));
        assert_eq!(layout("RGB"), (vec![0], vec![52], 572));
        assert_eq!(layout("P010_10LE"), (vec![0, 432], vec![36, 36], 648));
    }

    #[test]
    fn plane_shapes() {
        let nv12 = by_name("nv12").unwrap();
        assert_eq!(nv12.plane_array(0, 17, 11).shape(), vec![11, 17]);
        assert_eq!(nv12.plane_array(1, 17, 11).shape(), vec![6, 9, 2]);
        assert_eq!(by_name("YUY2").unwrap().plane_array(0, 17, 11).shape(), vec![11, 18, 2]);
    }
}
