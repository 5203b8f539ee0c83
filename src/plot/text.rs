//! Text on the bitmap backend, laid out properly.
//!
//! plotters 0.3.7's `ab_glyph` renderer places each glyph at the pen position without its
//! left side bearing and puts the baseline at half the font size, so glyphs overlap ("Tr"),
//! combining marks (the bar of x̄) land beside their letter, and thin glyphs drift. This
//! backend wraps any plotters backend and draws text itself with `ab_glyph`: each glyph at
//! pen + kerning + its own bounds, on a baseline one ascent below the top of the line box;
//! the line box is `ascent − descent` high and as wide as the advances. Everything else is
//! delegated. Rotated text (used for vertical axis labels) is drawn rotated by 90°/270° too.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind, FontTransform};

/// The embedded font (DejaVu Sans).
fn font() -> FontRef<'static> {
    FontRef::try_from_slice(dejavu::sans::regular()).expect("the embedded DejaVu Sans parses")
}

/// A glyph's coverage pixels relative to the top-left of the text's line box, and the box.
pub struct Layout {
    /// (x, y, coverage) with the line box's top-left at (0, 0).
    pub pixels: Vec<(i32, i32, f32)>,
    /// Advance width (pixels).
    pub width: i32,
    /// Line height, ascent − descent (pixels).
    pub height: i32,
    /// Every glyph's ink box (x0, y0, x1, y1), for overlap tests.
    pub boxes: Vec<(f32, f32, f32, f32)>,
    /// The glyph (index into `boxes`) of each pixel.
    pub glyph_of: Vec<usize>,
}

/// Lays out `text` at `size` pixels per em (plotters' font size).
pub fn layout(text: &str, size: f64) -> Layout {
    let f = font();
    let scaled = f.as_scaled(PxScale::from(size as f32));
    let ascent = scaled.ascent();
    let height = (scaled.ascent() - scaled.descent()).ceil() as i32;
    let mut pen = 0f32;
    let mut prev: Option<ab_glyph::GlyphId> = None;
    let mut pixels = Vec::new();
    let mut boxes = Vec::new();
    let mut glyph_of = Vec::new();
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            pen += scaled.kern(p, id);
        }
        prev = Some(id);
        let glyph = id.with_scale_and_position(PxScale::from(size as f32), ab_glyph::point(pen, ascent));
        if let Some(outlined) = f.outline_glyph(glyph) {
            let b = outlined.px_bounds();
            let k = boxes.len();
            boxes.push((b.min.x, b.min.y, b.max.x, b.max.y));
            outlined.draw(|x, y, cov| {
                if cov > 0.0 {
                    pixels.push((b.min.x as i32 + x as i32, b.min.y as i32 + y as i32, cov));
                    glyph_of.push(k);
                }
            });
        }
        pen += scaled.h_advance(id);
    }
    Layout { pixels, width: pen.ceil() as i32, height, boxes, glyph_of }
}

/// A text's box as drawn: (x0, y0, x1, y1, text).
pub type TextBox = (i32, i32, i32, i32, String);

/// A plotters backend whose text is drawn by [`layout`]; optionally records every text box
/// (for the figure tests: no two labels may overlap).
pub struct FixedText<B> {
    inner: B,
    boxes: Option<std::rc::Rc<std::cell::RefCell<Vec<TextBox>>>>,
}

impl<B> FixedText<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> FixedText<B> {
        FixedText { inner, boxes: None }
    }
    /// Wraps `inner`, pushing every drawn text's box onto `sink`.
    pub fn recording(inner: B, sink: std::rc::Rc<std::cell::RefCell<Vec<TextBox>>>) -> FixedText<B> {
        FixedText { inner, boxes: Some(sink) }
    }
}

impl<B: DrawingBackend> DrawingBackend for FixedText<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }
    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let l = layout(text, style.size());
        Ok((l.width.max(0) as u32, l.height.max(0) as u32))
    }
    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let l = layout(text, style.size());
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -l.width,
            HPos::Center => -l.width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -l.height / 2,
            VPos::Bottom => -l.height,
        };
        let (w, h) = self.get_size();
        let trans = style.transform();
        if let (Some(sink), FontTransform::None) = (&self.boxes, &trans) {
            if !text.trim().is_empty() {
                let (x0, y0) = (pos.0 + dx, pos.1 + dy);
                // The ink's extent (the line box's descender space is empty for most text).
                let (ix0, iy0, ix1, iy1) = l
                    .pixels
                    .iter()
                    .fold((i32::MAX, i32::MAX, i32::MIN, i32::MIN), |(a, b, c, d), &(x, y, _)| (a.min(x), b.min(y), c.max(x), d.max(y)));
                if ix0 <= ix1 {
                    sink.borrow_mut().push((x0 + ix0, y0 + iy0, x0 + ix1 + 1, y0 + iy1 + 1, text.to_string()));
                }
            }
        }
        for (x, y, cov) in l.pixels {
            let (x, y) = match trans {
                FontTransform::None => (x + dx, y + dy),
                // Rotated about the anchor, as plotters' own renderer does.
                _ => trans.transform(x + dx, y + dy),
            };
            let (x, y) = (pos.0 + x, pos.1 + y);
            if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
                self.inner.draw_pixel((x, y), BackendColor { alpha: color.alpha * cov.min(1.0) as f64, rgb: color.rgb })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Glyphs of "Training" never overlap (the old renderer drew "T" and "r" on top of each
    /// other), a period sits on the baseline with the digits, and the combining bar of x̄ lies
    /// over its x.
    #[test]
    fn glyphs_are_placed_by_their_bounds() {
        // No pixel is inked (coverage > 0.5) by two glyphs; kerning may tuck "r" under the
        // arm of "T", but their ink stays apart.
        let l = layout("Training", 20.0);
        let mut inked: std::collections::HashMap<(i32, i32), usize> = std::collections::HashMap::new();
        for (&(x, y, cov), &g) in l.pixels.iter().zip(&l.glyph_of) {
            if cov > 0.5 {
                if let Some(other) = inked.insert((x, y), g) {
                    assert_eq!(other, g, "glyphs {other} and {g} both ink pixel ({x}, {y})");
                }
            }
        }
        let d = layout("0.5", 20.0);
        let (zero, dot) = (d.boxes[0], d.boxes[1]);
        assert!((dot.3 - zero.3).abs() <= 1.5, "the period's bottom {} vs the digit's {}", dot.3, zero.3);
        let x = layout("x\u{0304}", 20.0);
        let (xb, bar) = (x.boxes[0], x.boxes[1]);
        assert!(bar.0 < xb.2 && bar.2 > xb.0 && bar.3 <= xb.1 + 1.0, "bar {bar:?} over x {xb:?}");
        assert!(l.width > 0 && l.height >= 20);
    }
}
