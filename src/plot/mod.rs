//! Rendering only (no metric is computed here): plotters on an in-memory bitmap saved with
//! `image` (PNG) and plotters' SVG backend, with the embedded DejaVu Sans font.

use std::path::Path;
use std::sync::Once;

use image::RgbImage;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};

pub mod explorer;
pub mod text;

/// Registers the embedded font once (no system fonts are used).
pub fn init_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// The viridis-like colour of `t ∈ [0, 1]`.
pub fn heat(t: f64) -> RGBColor {
    use plotters::style::colors::colormaps::ViridisRGB;
    ViridisRGB::get_color(t.clamp(0.0, 1.0))
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: drawing failed: {e}", path.display()))
}

/// Writes `buf` (RGB, `w × h`) to `path` as PNG through a temp file + rename.
pub fn save_png(path: &Path, buf: Vec<u8>, w: u32, h: u32) -> Result<()> {
    save_png_described(path, buf, w, h, "")
}

/// [`save_png`] with the figure's caption in a `Description` text chunk (what the figure shows;
/// read back by the figures index).
pub fn save_png_described(path: &Path, buf: Vec<u8>, w: u32, h: u32, description: &str) -> Result<()> {
    if buf.len() != (w * h * 3) as usize {
        return Err(plot_err(path, "buffer size"));
    }
    let tmp = path.with_extension("png.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if !description.is_empty() {
        enc.add_itxt_chunk("Description".into(), description.into()).map_err(|e| plot_err(path, e))?;
    }
    let mut writer = enc.write_header().map_err(|e| plot_err(path, e))?;
    writer.write_image_data(&buf).map_err(|e| plot_err(path, e))?;
    writer.finish().map_err(|e| plot_err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `text` escaped for XML.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The caption an SVG written by [`render`] carries in its `<desc>` (None without one).
pub fn svg_caption(svg: &str) -> Option<String> {
    let a = svg.find("<desc>")? + "<desc>".len();
    let b = a + svg[a..].find("</desc>")?;
    Some(svg[a..b].replace("&quot;", "\"").replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&"))
}

/// Bilinear upsampling of a `side × side` map to `size × size` (pixel centres aligned), then
/// min–max normalised to [0, 1].
pub fn upsample_normalized(values: &[f32], side: usize, size: usize) -> Vec<f64> {
    let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    upsample_on(values, side, size, (lo as f64, hi as f64))
}

/// Bilinear upsampling of a `side × side` map to `size × size`, mapped to [0, 1] on the given
/// range (values outside are clipped).
pub fn upsample_on(values: &[f32], side: usize, size: usize, (lo, hi): (f64, f64)) -> Vec<f64> {
    let range = if hi > lo { hi - lo } else { 1.0 };
    let at = |r: usize, c: usize| ((values[r * side + c] as f64 - lo) / range).clamp(0.0, 1.0);
    let mut out = vec![0.0; size * size];
    for y in 0..size {
        let fy = ((y as f64 + 0.5) * side as f64 / size as f64 - 0.5).clamp(0.0, (side - 1) as f64);
        let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(side - 1);
        for x in 0..size {
            let fx = ((x as f64 + 0.5) * side as f64 / size as f64 - 0.5).clamp(0.0, (side - 1) as f64);
            let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(side - 1);
            out[y * size + x] = (1.0 - ty) * ((1.0 - tx) * at(y0, x0) + tx * at(y0, x1)) + ty * ((1.0 - tx) * at(y1, x0) + tx * at(y1, x1));
        }
    }
    out
}

/// An image pixel under the heat colour of `v ∈ [0, 1]` with weight `alpha`.
fn blend(p: &image::Rgb<u8>, v: f64, alpha: f64) -> RGBColor {
    let hc = heat(v);
    let mix = |a: u8, b: u8| ((1.0 - alpha) * a as f64 + alpha * b as f64).round() as u8;
    RGBColor(mix(p[0], hc.0), mix(p[1], hc.1), mix(p[2], hc.2))
}

/// A grid of attention overlays: `cells[row][col]` is a `side × side` map drawn over `base`.
pub struct OverlayGrid<'a> {
    /// Title.
    pub title: String,
    /// The image under every cell.
    pub base: &'a RgbImage,
    /// Rows of cells, each a (row-major map, side) pair.
    pub cells: Vec<Vec<(Vec<f32>, usize)>>,
    /// Row labels.
    pub row_labels: Vec<String>,
    /// Column labels.
    pub col_labels: Vec<String>,
    /// Displayed size of each cell in pixels.
    pub cell: u32,
    /// Weight of the heat colour over the image (0..1).
    pub alpha: f64,
    /// One colour scale for every cell (stated on the figure with a colour bar) instead of
    /// each cell stretched to its own range; use it wherever cells are compared.
    pub shared_scale: bool,
    /// What the colours measure, with its unit (the colour bar's label).
    pub unit: String,
}

/// Renders an [`OverlayGrid`] to PNG, with an SVG beside it that shows the same picture
/// (the raster embedded by reference).
pub fn overlay_grid_png(path: &Path, g: &OverlayGrid) -> Result<()> {
    init_fonts();
    let (rows, cols) = (g.cells.len() as u32, g.cells.iter().map(|r| r.len()).max().unwrap_or(0) as u32);
    let (left, top, pad) = (70u32, 56u32, 4u32);
    let bar_w = COLOR_BAR_W as u32 + 60;
    let w = left + cols * (g.cell + pad) + pad + bar_w;
    // Room below the cells for the colour bar's label.
    let h = top + rows * (g.cell + pad) + pad + 24;
    let shared = g
        .shared_scale
        .then(|| finite_range(g.cells.iter().flatten().flat_map(|(v, _)| v.iter().map(|&x| x as f64)).collect::<Vec<_>>().iter()));
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = text::FixedText::new(BitMapBackend::with_buffer(&mut buf, (w, h))).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let font = ("sans-serif", fitted_size(&g.title, w, 16)).into_font();
        root.draw_text(&g.title, &font.color(&BLACK), (8, 6)).map_err(|e| plot_err(path, e))?;
        let small = ("sans-serif", 13).into_font();
        for (c, label) in g.col_labels.iter().enumerate() {
            let x = (left + c as u32 * (g.cell + pad) + 4) as i32;
            // Each label fits over its own cell (shrinking, never running into the next).
            let f = ("sans-serif", fitted_size(label, g.cell, 13)).into_font();
            root.draw_text(label, &f.color(&BLACK), (x, (top - 18) as i32)).map_err(|e| plot_err(path, e))?;
        }
        let base = image::imageops::resize(g.base, g.cell, g.cell, image::imageops::FilterType::Triangle);
        for (r, row) in g.cells.iter().enumerate() {
            let y0 = top + r as u32 * (g.cell + pad);
            if let Some(label) = g.row_labels.get(r) {
                root.draw_text(label, &small.color(&BLACK), (6, (y0 + g.cell / 2 - 6) as i32)).map_err(|e| plot_err(path, e))?;
            }
            for (c, (values, side)) in row.iter().enumerate() {
                let x0 = left + c as u32 * (g.cell + pad);
                let up = match shared {
                    Some(range) => upsample_on(values, *side, g.cell as usize, range),
                    None => upsample_normalized(values, *side, g.cell as usize),
                };
                for y in 0..g.cell {
                    for x in 0..g.cell {
                        let col = blend(base.get_pixel(x, y), up[(y * g.cell + x) as usize], g.alpha);
                        root.draw_pixel(((x0 + x) as i32, (y0 + y) as i32), &col).map_err(|e| plot_err(path, e))?;
                    }
                }
            }
        }
        // The colour bar: the shared range, or each cell's own min to max.
        let bx = (left + cols * (g.cell + pad) + pad + 10) as i32;
        let bar_h = (rows * (g.cell + pad)).clamp(80, 400) as i32 - pad as i32;
        match shared {
            Some(range) => draw_color_bar(&root, ColorScale::Sequential, range, (bx, top as i32), bar_h, &g.unit),
            None => {
                draw_color_bar(&root, ColorScale::Fixed(0.0, 1.0), (0.0, 1.0), (bx, top as i32), bar_h, "")
                    .map_err(|e| plot_err(path, e))?;
                let note =
                    if g.unit.is_empty() { "each panel: min → max".to_string() } else { format!("{}, each panel min → max", g.unit) };
                let f = ("sans-serif", fitted_size(&note, bar_w + 20, 11)).into_font();
                root.draw_text(&note, &f.color(&BLACK), (bx - 10, top as i32 + bar_h + 4)).map_err(|e| e.to_string())
            }
        }
        .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    save_png_described(path, buf, w, h, &g.title)?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" width=\"{w}\" height=\"{h}\"><title>{0}</title><desc>{0}</desc><image width=\"{w}\" height=\"{h}\" xlink:href=\"{name}\" href=\"{name}\"/></svg>\n",
        g.title.replace('&', "&amp;").replace('<', "&lt;")
    );
    crate::io::write_atomic(&path.with_extension("svg"), svg.as_bytes())
}

/// A figure drawable on any plotters backend at a fixed size.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws onto `root` (PNG or SVG backend).
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String>;
    /// What the figure shows, in words (its title and caption): written into the PNG's
    /// `Description` and the SVG's `<desc>`, and listed under the figure in the index.
    fn describe(&self) -> String {
        String::new()
    }
    /// The first value that must not be drawn (±∞ anywhere; NaN where the figure has no
    /// "missing" meaning for it), described for the error. Checked before anything is drawn.
    fn bad_value(&self) -> Option<String> {
        None
    }
}

fn first_bad<'a>(what: &str, values: impl IntoIterator<Item = &'a f64>, nan_ok: bool) -> Option<String> {
    values.into_iter().find(|v| v.is_infinite() || (!nan_ok && v.is_nan())).map(|v| format!("{what} holds {v}"))
}

/// Draws `fig` into an RGB buffer and returns it with its size and every text box drawn (the
/// figure tests read both).
pub fn render_to_buffer(fig: &impl Figure) -> std::result::Result<(Vec<u8>, u32, u32, Vec<text::TextBox>), String> {
    init_fonts();
    let (w, h) = fig.size();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let sink = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    fig.draw(text::FixedText::recording(BitMapBackend::with_buffer(&mut buf, (w, h)), sink.clone()).into_drawing_area())?;
    let boxes = sink.borrow().clone();
    Ok((buf, w, h, boxes))
}

/// Renders `fig` to `stem.png` (bitmap, saved with `image`) and `stem.svg`, both atomically.
pub fn render(stem: &Path, fig: &impl Figure) -> Result<()> {
    if let Some(bad) = fig.bad_value() {
        return Err(Error::Numeric(format!("{}: not drawn: {bad} (the data are not finite)", stem.display())));
    }
    init_fonts();
    let (w, h) = fig.size();
    if let Some(dir) = stem.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let png = stem.with_extension("png");
    let mut buf = vec![255u8; (w * h * 3) as usize];
    fig.draw(text::FixedText::new(BitMapBackend::with_buffer(&mut buf, (w, h))).into_drawing_area()).map_err(|e| plot_err(&png, e))?;
    let description = fig.describe();
    save_png_described(&png, buf, w, h, &description)?;
    let svg = stem.with_extension("svg");
    let mut text = String::new();
    fig.draw(SVGBackend::with_string(&mut text, (w, h)).into_drawing_area()).map_err(|e| plot_err(&svg, e))?;
    if !description.is_empty() {
        if let Some(i) = text.find("<svg").and_then(|i| text[i..].find('>').map(|j| i + j + 1)) {
            text.insert_str(i, &format!("\n<desc>{}</desc>", xml(&description)));
        }
    }
    crate::io::write_atomic(&svg, text.as_bytes())
}

/// A labelled square matrix heatmap (e.g. caption token × token attention).
pub struct Matrix<'a> {
    /// Title.
    pub title: String,
    /// Row-major `side × side` values.
    pub values: &'a [f32],
    /// Side of the matrix.
    pub side: usize,
    /// Labels of the rows and columns.
    pub labels: Vec<String>,
}

fn draw_matrix<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    m: &Matrix,
    cell: i32,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (left, top) = (110, 40);
    root.draw_text(&m.title, &("sans-serif", fitted_size(&m.title, root.dim_in_pixel().0, 16)).into_font().color(&BLACK), (8, 8))
        .map_err(e)?;
    // The first query of a causal matrix (SOT) can attend only to itself: its 1 would stretch
    // the scale and flatten every other row, so the scale is the other rows' maximum (the SOT
    // cell is drawn at the top colour) and the colour bar says so.
    let rest = if m.side > 1 { &m.values[m.side..] } else { m.values };
    let hi = rest.iter().cloned().fold(f32::MIN, f32::max).max(1e-12) as f64;
    let font = ("sans-serif", 12).into_font();
    for (i, label) in m.labels.iter().enumerate() {
        root.draw_text(label, &font.color(&BLACK), (6, top + i as i32 * cell + cell / 2 - 6)).map_err(e)?;
    }
    for r in 0..m.side {
        for c in 0..m.side {
            let v = (m.values[r * m.side + c] as f64 / hi).min(1.0);
            let (x, y) = (left + c as i32 * cell, top + r as i32 * cell);
            root.draw(&Rectangle::new([(x, y), (x + cell - 1, y + cell - 1)], heat(v).filled())).map_err(e)?;
        }
    }
    let unit = if m.side > 1 { "attention (first row: off scale)" } else { "attention" };
    draw_color_bar(
        &root,
        ColorScale::Fixed(0.0, hi),
        (0.0, hi),
        (left + m.side as i32 * cell + 14, top),
        (m.side as i32 * cell).max(60) - 2,
        unit,
    )?;
    // Column labels: vertical text under the matrix.
    let below = top + m.side as i32 * cell + 4;
    let vfont = font.transform(FontTransform::Rotate90);
    for (i, label) in m.labels.iter().enumerate() {
        root.draw_text(label, &vfont.color(&BLACK), (left + i as i32 * cell + cell / 2 + 6, below)).map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Renders a [`Matrix`] to `stem.png` and `stem.svg`.
pub fn matrix_png_svg(stem: &Path, m: &Matrix) -> Result<()> {
    render(stem, m)
}

impl Figure for Matrix<'_> {
    fn describe(&self) -> String {
        join_caption(
            &self.title,
            Some("Rows: queries; columns: keys; the first row is off the colour scale (a causal first query attends only to itself)."),
        )
    }
    fn size(&self) -> (u32, u32) {
        let cell = 22;
        ((110 + self.side as i32 * cell + 20 + COLOR_BAR_W + 90) as u32, (40 + (self.side as i32 * cell).max(60) + 110) as u32)
    }
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String> {
        draw_matrix(root, self, 22)
    }
}

/// A line chart: one or more named series of (x, y) points, optionally with a 95 % band
/// per point (drawn as error bars). Series keep their colour across figures when they are
/// named after a model ([`model_color`]); each series has its own marker shape and the
/// markers shrink from the first series to the last, so lines that coincide stay visible (and
/// are named in a note). The legend sits in its own panel right of the plot, never on data.
#[derive(Default)]
pub struct LineChart {
    /// Title.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// (name, points) per line.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// y-axis range (with `y_log`, both ends > 0).
    pub y_range: (f64, f64),
    /// Logarithmic y axis (values ≤ the range's lower end are drawn at it).
    pub y_log: bool,
    /// Per series, the (lo, hi) interval of each point (error bars), or `None`.
    pub bands: Vec<Option<Vec<(f64, f64)>>>,
    /// x is an index (slot, K, step): integer tick labels.
    pub x_integer: bool,
    /// Explanatory text under the chart (why this metric, what to read).
    pub caption: Option<String>,
    /// Horizontal reference lines (value, label): chance, the full model, a null.
    pub hlines: Vec<(f64, String)>,
    /// Per series, individual values drawn as small translucent dots under its line (the
    /// per-seed values behind a mean), or `None`; empty: none for any series.
    pub dots: Vec<Option<Vec<(f64, f64)>>>,
}

const SERIES_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// One colour per model across every figure: the sharing spectrum's models (and their CLIP
/// and MS-CLIP relatives) have fixed colours; any other name gets one from its hash.
pub fn model_color(name: &str) -> Option<RGBColor> {
    let fixed = match family(name) {
        "clip" | "clip-b32" | "clip-b16" => Some(0),
        "msclip-attn" => Some(4),
        "msclip" | "msclip-b32" => Some(2),
        "msclip-ln" => Some(3),
        "msclip-s" | "msclip-s-b32" | "msclip-s-b16" => Some(1),
        "clip-s" => Some(6),
        "clip-msnorm" => Some(5),
        _ => None,
    };
    fixed.map(|i| SERIES_COLORS[i])
}

/// A series name as a model family: without the size prefix (`tiny-`, `micro-`) and the
/// synthetic world it was trained on (`-relations`, `-shapes`), which do not change the model.
fn family(name: &str) -> &str {
    let base = name.trim_start_matches("tiny-").trim_start_matches("micro-");
    base.strip_suffix("-relations").or_else(|| base.strip_suffix("-shapes")).unwrap_or(base)
}

fn series_color(name: &str, i: usize) -> RGBColor {
    model_color(name).unwrap_or(SERIES_COLORS[(i + 5) % SERIES_COLORS.len()])
}

/// The marker shape of a series ([`marker`]'s index): fixed per model family, like its
/// colour, so a model looks the same in every figure whatever else is plotted (CLIP and its
/// unshared controls CLIP-S and CLIP-msnorm ●, MS-CLIP ▲, MS-CLIP-S ■, MS-CLIP-LN ◆,
/// MS-CLIP-attn ✕); other series by position.
fn series_shape(name: &str, i: usize) -> usize {
    match family(name) {
        "clip" | "clip-b32" | "clip-b16" | "clip-s" | "clip-msnorm" => 0,
        "msclip" | "msclip-b32" => 1,
        "msclip-s" | "msclip-s-b32" | "msclip-s-b16" => 2,
        "msclip-ln" => 3,
        "msclip-attn" => 4,
        _ => i,
    }
}

fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    at: (i32, i32),
    i: usize,
    size: i32,
    col: RGBColor,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x, y) = at;
    let style = col.filled();
    match i % 5 {
        0 => area.draw(&Circle::new(at, size, style)),
        1 => area.draw(&Polygon::new(vec![(x, y - size - 1), (x - size - 1, y + size), (x + size + 1, y + size)], style)),
        2 => area.draw(&Rectangle::new([(x - size, y - size), (x + size, y + size)], style)),
        3 => area.draw(&Polygon::new(vec![(x, y - size - 2), (x + size + 1, y), (x, y + size + 2), (x - size - 1, y)], style)),
        _ => area.draw(&Cross::new(at, size + 1, col.stroke_width(2))),
    }
}

fn draw_lines<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, c: &LineChart) -> std::result::Result<(), String> {
    if c.y_log {
        // Draw log10 of every value on a linear axis whose labels read 10^v.
        let floor = c.y_range.0.max(f64::MIN_POSITIVE);
        let t = |y: f64| if y.is_nan() { y } else { y.max(floor).log10() };
        let logged = LineChart {
            title: c.title.clone(),
            x_label: c.x_label.clone(),
            y_label: c.y_label.clone(),
            series: c.series.iter().map(|(n, p)| (n.clone(), p.iter().map(|&(x, y)| (x, t(y))).collect())).collect(),
            y_range: (t(c.y_range.0), t(c.y_range.1)),
            y_log: false,
            bands: c.bands.iter().map(|b| b.as_ref().map(|b| b.iter().map(|&(lo, hi)| (t(lo), t(hi))).collect())).collect(),
            x_integer: c.x_integer,
            caption: c.caption.clone(),
            hlines: c.hlines.iter().map(|(v, l)| (t(*v), l.clone())).collect(),
            dots: c.dots.iter().map(|d| d.as_ref().map(|d| d.iter().map(|&(x, y)| (x, t(y))).collect())).collect(),
        };
        return draw_lines_with(root, &logged, true);
    }
    draw_lines_with(root, c, false)
}

fn draw_lines_with<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    c: &LineChart,
    log_labels: bool,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (w, h) = root.dim_in_pixel();
    let caption_h = caption_height(c);
    let (main, bottom) = root.split_vertically(h as i32 - caption_h);
    let (plot_area, legend) = main.split_horizontally(w as i32 - 190);
    let xs = c.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0 < x1 { (x0, x1) } else { (x0 - 1.0, x0 + 1.0) };
    // Room for the end markers: a third of a unit on a short index axis (slots), 2 % of the
    // span on a long one (steps), where a third of a unit would leave them on the axis.
    let pad = if c.x_integer { (0.02 * (x1 - x0)).max(0.3) } else { 0.0 };
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(&c.title, ("sans-serif", fitted_size(&c.title, plot_area.dim_in_pixel().0, 17)))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0 - pad..x1 + pad, c.y_range.0..c.y_range.1)
        .map_err(|x| x.to_string())?;
    let n_ticks = if c.x_integer { ((x1 - x0).round() as usize + 1).min(16) } else { 10 };
    let int_labels = |v: &f64| if (v - v.round()).abs() < 1e-6 { format!("{}", v.round() as i64) } else { String::new() };
    // Log axis: label the decades only (10^0.5 = 3.16 printed as "3.2" reads as a misplaced 3).
    let pow_labels = |v: &f64| {
        if (v - v.round()).abs() > 1e-6 {
            return String::new();
        }
        let e = v.round() as i32;
        if e >= 0 {
            format!("{}", 10f64.powi(e))
        } else {
            format!("{:.*}", (-e) as usize, 10f64.powi(e))
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(c.x_label.as_str()).y_desc(c.y_label.as_str()).label_style(("sans-serif", 13)).x_labels(n_ticks);
    if c.x_integer {
        mesh.x_label_formatter(&int_labels);
    }
    // Linear axis: as many decimals as the tick spacing needs, and never "-0.0".
    let y_digits = {
        let span = (c.y_range.1 - c.y_range.0).abs().max(1e-12);
        (-(span / 10.0).log10().floor()).max(0.0) as usize
    };
    let lin_labels = move |v: &f64| {
        let v = if v.abs() < 0.5 * 10f64.powi(-(y_digits as i32)) { 0.0 } else { *v };
        format!("{v:.y_digits$}")
    };
    if log_labels {
        mesh.y_label_formatter(&pow_labels);
    } else {
        mesh.y_label_formatter(&lin_labels);
    }
    mesh.draw().map_err(|x| x.to_string())?;
    for (v, label) in &c.hlines {
        if !(v.is_finite() && *v >= c.y_range.0 && *v <= c.y_range.1) {
            continue;
        }
        let grey = RGBColor(90, 90, 90);
        let (xa, xb) = (x0 - pad, x1 + pad);
        let steps = 60;
        for k in (0..steps).step_by(2) {
            let (p, q) = (xa + (xb - xa) * k as f64 / steps as f64, xa + (xb - xa) * (k + 1) as f64 / steps as f64);
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(p, *v), (q, *v)], grey.stroke_width(1))))
                .map_err(|x| x.to_string())?;
        }
        // The label sits just above or just below its line (text hangs from its anchor), at
        // the place along it where the fewest points of the data lines fall inside its box:
        // a chance line that the data hug keeps a readable label.
        let span = c.y_range.1 - c.y_range.0;
        let (lw, lh) = (7 * label.chars().count() as i32, 14);
        let plot_px = |x: f64, y: f64| chart.backend_coord(&(x, y));
        let samples: Vec<(i32, i32)> = c
            .series
            .iter()
            .flat_map(|(_, p)| p.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>())
            .filter(|(a, b)| a.1.is_finite() && b.1.is_finite())
            .flat_map(|(a, b)| {
                let (pa, pb) = (plot_px(a.0, a.1.clamp(c.y_range.0, c.y_range.1)), plot_px(b.0, b.1.clamp(c.y_range.0, c.y_range.1)));
                let k = ((pb.0 - pa.0).abs().max((pb.1 - pa.1).abs()) / 2).max(1);
                (0..=k).map(move |i| (pa.0 + (pb.0 - pa.0) * i / k, pa.1 + (pb.1 - pa.1) * i / k))
            })
            .chain(c.series.iter().flat_map(|(_, p)| p.iter().filter(|q| q.1.is_finite()).map(|q| plot_px(q.0, q.1))))
            .collect();
        let (left, right) = (plot_px(xa, *v).0, plot_px(xb, *v).0);
        let mut best: Option<(usize, (f64, f64))> = None;
        for below in [false, true] {
            let label_y = if below { *v - 0.01 * span } else { *v + 0.045 * span };
            if label_y > c.y_range.1 || (below && *v - 0.05 * span < c.y_range.0) {
                continue;
            }
            for f in [0.01, 0.25, 0.5, 0.75, 0.98] {
                let x = xa + (xb - xa) * f;
                let (mut px0, py0) = plot_px(x, label_y);
                px0 = px0.min(right - lw).max(left);
                let hits = samples
                    .iter()
                    .filter(|(sx, sy)| *sx >= px0 - 6 && *sx <= px0 + lw + 6 && *sy >= py0 - 6 && *sy <= py0 + lh + 6)
                    .count();
                if best.is_none_or(|(b, _)| hits < b) {
                    let back = xa + (xb - xa) * (px0 - left) as f64 / (right - left).max(1) as f64;
                    best = Some((hits, (back, label_y)));
                }
            }
        }
        if let Some((_, at)) = best {
            chart
                .draw_series(std::iter::once(Text::new(label.clone(), at, ("sans-serif", 12).into_font().color(&grey))))
                .map_err(|x| x.to_string())?;
        }
    }
    let n = c.series.len();
    // On an index axis (slots, K) the series are dodged sideways by a few hundredths of a unit,
    // so lines and bars that share values stay side by side instead of hiding each other.
    let dodge = |i: usize| if c.x_integer && n > 1 && x1 - x0 <= 64.0 { (i as f64 - (n - 1) as f64 / 2.0) * 0.06 } else { 0.0 };
    // Per-seed dots first (under every line), each series' shifted sideways by about 1 % of
    // the axis so that the series' seeds at one x stay apart.
    for (i, (name, _)) in c.series.iter().enumerate() {
        let Some(Some(dots)) = c.dots.get(i) else { continue };
        let col = series_color(name, i);
        let shift = dodge(i) + if dodge(i) == 0.0 && n > 1 { (i as f64 - (n - 1) as f64 / 2.0) * 0.012 * (x1 - x0) } else { 0.0 };
        for &(x, y) in dots {
            if y.is_finite() && y >= c.y_range.0 && y <= c.y_range.1 {
                let at = chart.backend_coord(&(x + shift, y));
                plot_area.draw(&Circle::new(at, 2, col.mix(0.45).filled())).map_err(e)?;
            }
        }
    }
    for (i, (name, pts)) in c.series.iter().enumerate() {
        let col = series_color(name, i);
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x + dodge(i), y)).collect();
        let pts = &pts;
        chart.draw_series(LineSeries::new(pts.iter().copied(), col.stroke_width(2))).map_err(|x| x.to_string())?;
        if let Some(Some(band)) = c.bands.get(i) {
            for (&(x, _), &(lo, hi)) in pts.iter().zip(band) {
                if lo.is_finite() && hi.is_finite() {
                    chart
                        .draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], col.stroke_width(2))))
                        .map_err(|x| x.to_string())?;
                    for y in [lo, hi] {
                        let dx = (x1 - x0 + 2.0 * pad) * 0.008;
                        chart
                            .draw_series(std::iter::once(PathElement::new(vec![(x - dx, y), (x + dx, y)], col.stroke_width(2))))
                            .map_err(|x| x.to_string())?;
                    }
                }
            }
        }
        // Markers in pixel space: shape by series, size shrinking so coinciding ones nest.
        let size = (6 - (i as i32).min(3)).max(3);
        for &(x, y) in pts {
            // Points outside the stated range are not drawn (their markers would land on the
            // axis labels); the line runs to the plot's edge.
            if y.is_finite() && y >= c.y_range.0 && y <= c.y_range.1 {
                let at = chart.backend_coord(&(x, y));
                marker(&plot_area, at, series_shape(name, i), size, col).map_err(e)?;
            }
        }
    }
    // Legend panel, and a note for series that coincide.
    let font = ("sans-serif", 13).into_font();
    for (i, (name, _)) in c.series.iter().enumerate() {
        let col = series_color(name, i);
        let y = 40 + i as i32 * 22;
        legend.draw(&PathElement::new(vec![(6, y), (30, y)], col.stroke_width(2))).map_err(e)?;
        marker(&legend, (18, y), series_shape(name, i), (6 - (i as i32).min(3)).max(3), col).map_err(e)?;
        legend.draw(&Text::new(name.clone(), (38, y - 7), font.clone().color(&BLACK))).map_err(e)?;
    }
    let mut same = vec![];
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&c.series[i].1, &c.series[j].1);
            if a.len() == b.len()
                && !a.is_empty()
                && a.iter().zip(b).all(|(p, q)| (p.0 - q.0).abs() < 1e-12 && (p.1 - q.1).abs() <= 1e-9 * p.1.abs().max(1.0))
            {
                same.push(format!("{} = {}", c.series[i].0, c.series[j].0));
            }
        }
    }
    if !same.is_empty() {
        let y = 50 + n as i32 * 22;
        legend.draw(&Text::new("lines coincide:".to_string(), (6, y), font.clone().color(&BLACK))).map_err(e)?;
        for (k, t) in same.iter().enumerate() {
            legend.draw(&Text::new(t.clone(), (6, y + 18 * (k as i32 + 1)), font.clone().color(&BLACK))).map_err(e)?;
        }
    }
    if let Some(text) = &c.caption {
        for (k, line) in wrap(text, ((w as usize).saturating_sub(20)) / 7).iter().enumerate().take(8) {
            bottom.draw(&Text::new(line.clone(), (12, 6 + 17 * k as i32), ("sans-serif", 13).into_font().color(&BLACK))).map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Words of `text` in lines of at most `width` characters.
/// Height of a line chart's caption block: every wrapped line shown (up to 8).
fn caption_height(c: &LineChart) -> i32 {
    match &c.caption {
        Some(t) => 12 + 17 * wrap(t, (900 - 20) / 7).len().min(8) as i32,
        None => 0,
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("a line");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// Renders a [`LineChart`] to `stem.png` and `stem.svg`.
pub fn line_chart_png_svg(stem: &Path, c: &LineChart) -> Result<()> {
    render(stem, c)
}

impl Figure for LineChart {
    fn size(&self) -> (u32, u32) {
        (900, 440 + caption_height(self) as u32)
    }
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String> {
        draw_lines(root, self)
    }
    fn describe(&self) -> String {
        join_caption(&self.title, self.caption.as_deref())
    }
    fn bad_value(&self) -> Option<String> {
        self.series
            .iter()
            .find_map(|(n, pts)| first_bad(&format!("series {n:?}"), pts.iter().flat_map(|(x, y)| [x, y]), false))
            .or_else(|| self.bands.iter().flatten().find_map(|b| first_bad("a band", b.iter().flat_map(|(l, h)| [l, h]), true)))
    }
}

/// A labelled heatmap of `values[row][col]` (e.g. slot × head) with its colour bar.
#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    /// Title.
    pub title: String,
    /// Rows of values (NaN = no cell).
    pub values: Vec<Vec<f64>>,
    /// Row labels.
    pub row_labels: Vec<String>,
    /// Column labels.
    pub col_labels: Vec<String>,
    /// How values map to colours (drawn as a colour bar beside the cells).
    pub scale: ColorScale,
    /// What the colour bar measures, with its unit (e.g. "nats", "share recovered").
    pub unit: String,
    /// What is plotted, on how many items and checkpoints, and what to look for: drawn
    /// under the cells and written into the figure's metadata and the index.
    pub caption: Option<String>,
}

/// Height of a caption wrapped to `w` pixels (at most [`CAPTION_LINES`] lines of 17 px, plus
/// margins), 0 without one.
fn caption_block(caption: Option<&str>, w: u32) -> i32 {
    match caption.filter(|c| !c.trim().is_empty()) {
        Some(c) => 12 + 17 * wrap(c, (w as usize).saturating_sub(20) / 7).len().min(CAPTION_LINES) as i32,
        None => 0,
    }
}

/// Most lines a figure caption is drawn with (the index and metadata hold all of it).
const CAPTION_LINES: usize = 8;

/// The width a figure needs for its caption to wrap into about five lines (at most 900 px):
/// narrow heatmaps widen rather than cut their caption off.
fn caption_min_width(caption: Option<&str>) -> u32 {
    caption.map_or(0, |c| ((c.chars().count() / 5 + 8) * 7 + 20).min(900) as u32)
}

/// Draws `caption` wrapped under a figure from `y` (see [`caption_block`]).
fn draw_caption<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    caption: Option<&str>,
    y: i32,
) -> std::result::Result<(), String> {
    let Some(c) = caption.filter(|c| !c.trim().is_empty()) else { return Ok(()) };
    let (w, _) = root.dim_in_pixel();
    for (k, line) in wrap(c, (w as usize).saturating_sub(20) / 7).iter().enumerate().take(CAPTION_LINES) {
        root.draw_text(line, &("sans-serif", 13).into_font().color(&BLACK), (10, y + 6 + 17 * k as i32)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How a heatmap's values map to colours.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ColorScale {
    /// Magnitudes: viridis from the smallest to the largest finite value.
    #[default]
    Sequential,
    /// Magnitudes on a stated range (viridis; values outside it are clipped).
    Fixed(f64, f64),
    /// Signed values: blue (negative) – white (0) – red (positive), symmetric about 0 at
    /// ± the largest |value|.
    Diverging,
    /// Values around a reference (e.g. the uniform level): blue below, white at it, red
    /// above, symmetric about it.
    DivergingAbout(f64),
}

impl ColorScale {
    /// The scale in words, for captions.
    pub fn describe(&self) -> String {
        match self {
            ColorScale::Sequential => "sequential, from the smallest to the largest value".into(),
            ColorScale::Fixed(a, b) => format!("sequential on [{a}, {b}]"),
            ColorScale::Diverging => "diverging, white at 0".into(),
            ColorScale::DivergingAbout(c) => format!("diverging, white at {c:.3}"),
        }
    }

    /// The range drawn for `values` (for a diverging scale symmetric about 0).
    pub fn range<'a>(&self, values: impl Iterator<Item = &'a f64>) -> (f64, f64) {
        let (lo, hi) = finite_range(values);
        let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
        match *self {
            ColorScale::Sequential => (lo, hi),
            ColorScale::Fixed(a, b) => (a, b),
            ColorScale::Diverging => {
                let m = lo.abs().max(hi.abs()).max(1e-12);
                (-m, m)
            }
            ColorScale::DivergingAbout(c) => {
                let m = (lo - c).abs().max((hi - c).abs()).max(1e-12);
                (c - m, c + m)
            }
        }
    }

    /// The colour of `v` on `[lo, hi]` (grey for a missing value).
    pub fn color(&self, v: f64, (lo, hi): (f64, f64)) -> RGBColor {
        if !v.is_finite() {
            return RGBColor(200, 200, 200);
        }
        let t = if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.5 };
        match self {
            ColorScale::Diverging | ColorScale::DivergingAbout(_) => diverging(2.0 * t - 1.0),
            _ => heat(t),
        }
    }
}

/// Blue–white–red for `s ∈ [−1, 1]` (ColorBrewer RdBu end points, linear through white).
pub fn diverging(s: f64) -> RGBColor {
    let s = s.clamp(-1.0, 1.0);
    let (end, a) = if s < 0.0 { ([33.0, 102.0, 172.0], -s) } else { ([178.0, 24.0, 43.0], s) };
    let mix = |e: f64| (255.0 + (e - 255.0) * a).round() as u8;
    RGBColor(mix(end[0]), mix(end[1]), mix(end[2]))
}

/// "title. caption" for a figure's description.
fn join_caption(title: &str, caption: Option<&str>) -> String {
    match caption {
        Some(c) if !c.is_empty() => format!("{title}. {c}"),
        _ => title.to_string(),
    }
}

/// Width of the colour bar and its labels right of a heatmap's cells.
pub const COLOR_BAR_W: i32 = 96;

/// A vertical colour bar of `scale` on `range` at `(x, top)`, `h` pixels high, labelled at
/// its ends and middle, with `unit` above it.
fn draw_color_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    scale: ColorScale,
    range: (f64, f64),
    (x, top): (i32, i32),
    h: i32,
    unit: &str,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let h = h.max(40);
    let font = ("sans-serif", 11).into_font();
    if !unit.is_empty() {
        // The label fits the bar's column (shrinking rather than running off the figure).
        let f = ("sans-serif", fitted_size(unit, COLOR_BAR_W as u32 + 16, 11)).into_font();
        root.draw_text(unit, &f.color(&BLACK), (x, top + h + 4)).map_err(e)?;
    }
    for k in 0..h {
        // Top = high end.
        let v = range.1 - (range.1 - range.0) * k as f64 / (h - 1) as f64;
        let c = scale.color(v, range);
        root.draw(&Rectangle::new([(x, top + k), (x + 14, top + k + 1)], c.filled())).map_err(e)?;
    }
    root.draw(&Rectangle::new([(x, top), (x + 14, top + h)], BLACK.stroke_width(1))).map_err(e)?;
    let digits = {
        let span = (range.1 - range.0).abs().max(1e-12);
        (-(span / 4.0).log10().floor()).clamp(1.0, 6.0) as usize
    };
    for (frac, v) in [(0.0, range.1), (0.5, 0.5 * (range.0 + range.1)), (1.0, range.0)] {
        let y = top + (frac * (h - 1) as f64).round() as i32;
        let v = if v.abs() < 0.5 * 10f64.powi(-(digits as i32)) { 0.0 } else { v };
        root.draw(&PathElement::new(vec![(x + 14, y), (x + 18, y)], BLACK.stroke_width(1))).map_err(e)?;
        root.draw_text(&format!("{v:.digits$}"), &font.color(&BLACK), (x + 21, y - 6)).map_err(e)?;
    }
    Ok(())
}

/// (min, max) of the finite values.
fn finite_range<'a>(values: impl Iterator<Item = &'a f64>) -> (f64, f64) {
    values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)))
}

/// Labels and cells of a heatmap with its top-left cell at `origin`, coloured by `scale` on
/// `range`.
fn draw_heat_cells<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    m: &Heatmap,
    cell: i32,
    origin: (i32, i32),
    x0: i32,
    scale: ColorScale,
    range: (f64, f64),
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let (left, top) = origin;
    let font = ("sans-serif", 12).into_font();
    // Column labels wider than a cell ("head 10") lose their common first word, which is
    // written once left of them ("head" … "0 1 2").
    let too_wide = m.col_labels.iter().any(|l| text::layout(l, 12.0).width > cell - 3);
    let prefix = m.col_labels.first().and_then(|l| l.split_once(' ')).map(|(p, _)| p.to_string());
    let short = too_wide && prefix.as_ref().is_some_and(|p| m.col_labels.iter().all(|l| l.starts_with(&format!("{p} "))));
    if short {
        root.draw_text(prefix.as_deref().unwrap_or(""), &font.color(&BLACK), (x0 + 6, top - 16)).map_err(e)?;
    }
    for (c, label) in m.col_labels.iter().enumerate() {
        let label = if short { label.rsplit(' ').next().unwrap_or(label) } else { label.as_str() };
        root.draw_text(label, &font.color(&BLACK), (left + c as i32 * cell + 4, top - 16)).map_err(e)?;
    }
    for (r, row) in m.values.iter().enumerate() {
        if let Some(label) = m.row_labels.get(r) {
            root.draw_text(label, &font.color(&BLACK), (x0 + 6, top + r as i32 * cell + cell / 2 - 6)).map_err(e)?;
        }
        for (c, &v) in row.iter().enumerate() {
            let (x, y) = (left + c as i32 * cell, top + r as i32 * cell);
            let col = scale.color(v, range);
            root.draw(&Rectangle::new([(x, y), (x + cell - 2, y + cell - 2)], col.filled())).map_err(e)?;
        }
    }
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    m: &Heatmap,
    cell: i32,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    root.draw_text(&m.title, &("sans-serif", fitted_size(&m.title, root.dim_in_pixel().0, 15)).into_font().color(&BLACK), (8, 8))
        .map_err(e)?;
    let full = m.scale.range(m.values.iter().flatten());
    // A few outlier cells would flatten the scale: clipped, marked, and said.
    let clipped = clipped_range(m.scale, full, m.values.iter().flatten().copied());
    let range = clipped.unwrap_or(full);
    let mut notes = vec![];
    if m.values.iter().flatten().any(|v| v.is_nan()) {
        notes.push("grey: no value".to_string());
    }
    if clipped.is_some() {
        notes.push(format!("▲/▼: beyond the bar's ends (outliers, |value| up to {:.3})", full.1.abs().max(full.0.abs())));
    }
    if !notes.is_empty() {
        root.draw_text(&notes.join("; "), &("sans-serif", 11).into_font().color(&BLACK), (8, 30)).map_err(e)?;
    }
    let left = m.left();
    draw_heat_cells(&root, m, cell, (left, 60), 0, m.scale, range)?;
    for (ri, row) in m.values.iter().enumerate() {
        for (ci, &v) in row.iter().enumerate() {
            if let Some(mark) = outlier_mark(v, range) {
                let (x, y) = (left + ci as i32 * cell, 60 + ri as i32 * cell);
                root.draw_text(mark, &("sans-serif", 12).into_font().color(&BLACK), (x + cell / 2 - 6, y + cell / 2 - 8)).map_err(e)?;
            }
        }
    }
    let cols = m.values.iter().map(|r| r.len()).max().unwrap_or(1) as i32;
    let rows = m.values.len() as i32;
    draw_color_bar(&root, m.scale, range, (left + cols * cell + 16, 60), rows * cell - 2, &m.unit)?;
    draw_caption(&root, m.caption.as_deref(), 60 + (rows * cell).max(40) + 20)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Heatmaps side by side: `panels[row][col]` (e.g. models × {text, vision}), each titled by
/// its own `title`, one colour scale per column so rows (models) compare directly.
pub struct HeatmapPanels {
    /// Title.
    pub title: String,
    /// Rows of panels; each column shares one colour scale.
    pub panels: Vec<Vec<Heatmap>>,
    /// One colour scale for every panel (when the columns are compared with each other, e.g.
    /// the same statistic for text and vision), instead of one per column.
    pub shared_scale: bool,
    /// What a grey (NaN) cell means, said on the figure; `None`: no attention layer at that
    /// slot, or no such head.
    pub missing: Option<String>,
    /// What is plotted and what to look for (see [`Heatmap::caption`]).
    pub caption: Option<String>,
}

impl HeatmapPanels {
    const CELL: i32 = 24;
    /// Width of the row labels: the widest label plus a margin.
    fn label_w(&self) -> i32 {
        self.panels.iter().flatten().flat_map(|h| h.row_labels.iter()).map(|l| text::layout(l, 12.0).width).max().unwrap_or(0).max(40) + 14
    }
    fn panel_size(&self) -> (i32, i32) {
        let cols = self.panels.iter().flatten().map(|h| h.values.iter().map(|r| r.len()).max().unwrap_or(1)).max().unwrap_or(1) as i32;
        let rows = self.panels.iter().flatten().map(|h| h.values.len()).max().unwrap_or(1) as i32;
        ((self.label_w() + cols * Self::CELL + 24 + COLOR_BAR_W).max(220), 44 + rows * Self::CELL + 20)
    }
}

impl Figure for HeatmapPanels {
    fn describe(&self) -> String {
        let scale = self.panels.iter().flatten().next().map(|h| h.scale.describe()).unwrap_or_default();
        let shared = if self.shared_scale { "one colour scale for every panel" } else { "one colour scale per column" };
        let colour = format!("Colour: {scale}; {shared}.");
        join_caption(&self.title, Some(&self.caption.as_ref().map_or(colour.clone(), |c| format!("{c} {colour}"))))
    }
    fn size(&self) -> (u32, u32) {
        let (pw, ph) = self.panel_size();
        let cols = self.panels.iter().map(|r| r.len()).max().unwrap_or(1) as i32;
        let w = ((cols * pw + 16).max(420) as u32).max(caption_min_width(self.caption.as_deref()));
        (w, (56 + self.panels.len() as i32 * ph + caption_block(self.caption.as_deref(), w)) as u32)
    }
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String> {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        root.draw_text(&self.title, &("sans-serif", fitted_size(&self.title, root.dim_in_pixel().0, 15)).into_font().color(&BLACK), (8, 8))
            .map_err(e)?;
        // One colour scale per column (e.g. per modality), shared by every row (model), with
        // its colour bar beside each panel; the scale kind is the column's first panel's.
        let cols = self.panels.iter().map(|r| r.len()).max().unwrap_or(0);
        let scales: Vec<ColorScale> =
            (0..cols).map(|c| self.panels.iter().find_map(|r| r.get(c)).map_or(ColorScale::Sequential, |h| h.scale)).collect();
        let ranges: Vec<(f64, f64)> = if self.shared_scale {
            let all =
                scales.first().copied().unwrap_or_default().range(self.panels.iter().flatten().flat_map(|h| h.values.iter().flatten()));
            vec![all; cols]
        } else {
            (0..cols)
                .map(|c| scales[c].range(self.panels.iter().filter_map(|r| r.get(c)).flat_map(|h| h.values.iter().flatten())))
                .collect()
        };
        let scales: Vec<ColorScale> = if self.shared_scale { vec![scales.first().copied().unwrap_or_default(); cols] } else { scales };
        // A few outlier heads would flatten a sequential scale: its top is then the column's
        // 95th percentile and the cells above it carry a ▲ (said in the note).
        let mut ranges = ranges;
        let mut clipped_max = f64::NAN;
        if self.shared_scale {
            // One scale for every panel: clipped once, over every value.
            let vals = self.panels.iter().flatten().flat_map(|h| h.values.iter().flatten()).copied();
            if let (Some(&scale), Some(&full)) = (scales.first(), ranges.first()) {
                if let Some(r) = clipped_range(scale, full, vals) {
                    clipped_max = full.1.abs().max(full.0.abs());
                    ranges = vec![r; cols];
                }
            }
        } else {
            for c in 0..cols {
                let vals = self.panels.iter().filter_map(|r| r.get(c)).flat_map(|h| h.values.iter().flatten()).copied();
                if let Some(r) = clipped_range(scales[c], ranges[c], vals) {
                    clipped_max = clipped_max.max(ranges[c].1.abs().max(ranges[c].0.abs()));
                    ranges[c] = r;
                }
            }
        }
        let (pw, ph) = self.panel_size();
        let note = if self.shared_scale {
            "every panel shares one colour scale"
        } else if self.panels.len() > 1 {
            "each column shares one colour scale (bar beside each panel)"
        } else {
            "each panel has its own colour scale"
        };
        let has_gap = self.panels.iter().flatten().flat_map(|h| h.values.iter().flatten()).any(|v| v.is_nan());
        let note = if has_gap && !self.title.contains("grey") {
            format!(
                "{note}; grey: {}",
                self.missing.as_deref().unwrap_or("no value there (no attention layer at that slot, or no such head)")
            )
        } else {
            note.to_string()
        };
        root.draw_text(&note, &("sans-serif", 11).into_font().color(&BLACK), (8, 30)).map_err(e)?;
        if clipped_max.is_finite() {
            let more = format!("▲/▼: beyond the bar's ends (outliers, |value| up to {clipped_max:.3})");
            root.draw_text(&more, &("sans-serif", 11).into_font().color(&BLACK), (8, 43)).map_err(e)?;
        }
        for (r, row) in self.panels.iter().enumerate() {
            for (c, h) in row.iter().enumerate() {
                let (x0, y0) = (8 + c as i32 * pw, 56 + r as i32 * ph);
                root.draw_text(&h.title, &("sans-serif", 13).into_font().color(&BLACK), (x0, y0)).map_err(e)?;
                let lw = self.label_w();
                draw_heat_cells(&root, h, Self::CELL, (x0 + lw, y0 + 36), x0, scales[c], ranges[c])?;
                for (ri, row) in h.values.iter().enumerate() {
                    for (ci, &v) in row.iter().enumerate() {
                        if let Some(mark) = outlier_mark(v, ranges[c]) {
                            let (x, y) = (x0 + lw + ci as i32 * Self::CELL, y0 + 36 + ri as i32 * Self::CELL);
                            root.draw_text(mark, &("sans-serif", 12).into_font().color(&BLACK), (x + 5, y + 4)).map_err(e)?;
                        }
                    }
                }
                let ncols = h.values.iter().map(|v| v.len()).max().unwrap_or(1) as i32;
                draw_color_bar(
                    &root,
                    scales[c],
                    ranges[c],
                    (x0 + lw + ncols * Self::CELL + 10, y0 + 36),
                    h.values.len() as i32 * Self::CELL - 2,
                    &h.unit,
                )?;
            }
        }
        draw_caption(&root, self.caption.as_deref(), 56 + self.panels.len() as i32 * ph)?;
        root.present().map_err(e)?;
        Ok(())
    }
}

/// The top of a sequential scale that a few outliers would otherwise set: the values' 95th
/// percentile, when the largest value lies more than twice the percentile's distance from the
/// bottom above it (`range` = the full (min, max)); `None` when no value is an outlier.
pub fn robust_top(values: impl Iterator<Item = f64>, range: (f64, f64)) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.len() < 20 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = v[((v.len() - 1) as f64 * 0.95).round() as usize];
    (q > range.0 && range.1 - q > 2.0 * (q - range.0)).then_some(q)
}

/// The colour range that a few outliers would otherwise set, or `None` when nothing is
/// clipped: sequential scales take [`robust_top`] as their top; diverging ones (symmetric
/// about 0) clip at ± the 95th percentile of |value| by the same rule. Cells beyond the new
/// ends carry ▲ (above) or ▼ (below), and the figure says up to what.
fn clipped_range(scale: ColorScale, range: (f64, f64), values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    match scale {
        ColorScale::Sequential => robust_top(values, range).map(|t| (range.0, t)),
        ColorScale::Diverging => robust_top(values.map(f64::abs), (0.0, range.1.abs().max(range.0.abs()))).map(|t| (-t, t)),
        _ => None,
    }
}

/// ▲ or ▼ for a value beyond `range`'s top or bottom.
fn outlier_mark(v: f64, range: (f64, f64)) -> Option<&'static str> {
    let tol = 1e-12 * range.1.abs().max(range.0.abs()).max(1.0);
    if !v.is_finite() {
        None
    } else if v > range.1 + tol {
        Some("▲")
    } else if v < range.0 - tol {
        Some("▼")
    } else {
        None
    }
}

/// Renders a [`Heatmap`] to `stem.png` and `stem.svg`.
pub fn heatmap_png_svg(stem: &Path, m: &Heatmap) -> Result<()> {
    render(stem, m)
}

impl Heatmap {
    /// Cell side: 34 px, or wider where a column label needs it (labels never run together).
    /// Labels sharing a first word ("head 0", "head 1") are drawn without it (see
    /// `draw_heat_cells`), so only their last words count.
    fn cell(&self) -> i32 {
        let prefix = self.col_labels.first().and_then(|l| l.split_once(' ')).map(|(p, _)| format!("{p} "));
        let shared = prefix.as_ref().is_some_and(|p| self.col_labels.iter().all(|l| l.starts_with(p.as_str())));
        self.col_labels
            .iter()
            .map(|l| if shared { l.rsplit(' ').next().unwrap_or(l) } else { l.as_str() })
            .map(|l| text::layout(l, 12.0).width + 8)
            .max()
            .unwrap_or(0)
            .max(34)
    }
}

impl Heatmap {
    /// Left of the cells: 70 px, or the widest row label plus a margin ("slot 0 (shared)").
    fn left(&self) -> i32 {
        self.row_labels.iter().map(|l| text::layout(l, 12.0).width + 14).max().unwrap_or(0).max(70)
    }
}

impl Figure for Heatmap {
    fn size(&self) -> (u32, u32) {
        let cell = self.cell();
        let cols = self.values.iter().map(|r| r.len()).max().unwrap_or(1) as i32;
        // Wide enough for the title at full size (up to 900 px; longer titles shrink to fit).
        let title_w = (text::layout(&self.title, 15.0).width + 24).min(900);
        let w =
            ((self.left() + cols * cell + 20 + COLOR_BAR_W).max(360).max(title_w) as u32).max(caption_min_width(self.caption.as_deref()));
        (w, (60 + (self.values.len() as i32 * cell).max(40) + 20 + caption_block(self.caption.as_deref(), w)) as u32)
    }
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String> {
        draw_heatmap(root, self, self.cell())
    }
    fn describe(&self) -> String {
        let colour = format!("Colour: {} ({}).", if self.unit.is_empty() { "value" } else { &self.unit }, self.scale.describe());
        join_caption(&self.title, Some(&self.caption.as_ref().map_or(colour.clone(), |c| format!("{c} {colour}"))))
    }
}

/// A scatter plot of (x, y) points.
pub struct Scatter {
    /// Title.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
    /// Per point, its group (e.g. "slot 3"), coloured and listed in a legend; empty = one
    /// colour.
    pub groups: Vec<String>,
}

/// The largest font size (at most `max`, at least 9) at which `text`, measured with the
/// embedded font's advances, fits in `width` pixels: long titles shrink instead of being
/// clipped at both edges.
fn fitted_size(text: &str, width: u32, max: u32) -> u32 {
    (9..=max.max(9)).rev().find(|&s| text::layout(text, s as f64).width + 16 <= width as i32).unwrap_or(9)
}

fn draw_scatter<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, s: &Scatter) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let span = |f: fn(&(f64, f64)) -> f64| {
        let (a, b) = s.points.iter().map(f).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let pad = ((b - a) * 0.05).max(1e-6);
        (a - pad)..(b + pad)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(&s.title, ("sans-serif", fitted_size(&s.title, root.dim_in_pixel().0, 16)))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(span(|p| p.0), span(|p| p.1))
        .map_err(|x| x.to_string())?;
    chart
        .configure_mesh()
        .x_desc(s.x_label.as_str())
        .y_desc(s.y_label.as_str())
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|x| x.to_string())?;
    let mut names: Vec<&str> = Vec::new();
    for g in &s.groups {
        if !names.contains(&g.as_str()) {
            names.push(g);
        }
    }
    for (i, &p) in s.points.iter().enumerate() {
        let k = s.groups.get(i).and_then(|g| names.iter().position(|n| n == g)).unwrap_or(0);
        chart
            .draw_series(std::iter::once(Circle::new(p, 4, SERIES_COLORS[k % SERIES_COLORS.len()].mix(0.85).filled())))
            .map_err(|x| x.to_string())?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Renders a [`Scatter`] to `stem.png` and `stem.svg`.
pub fn scatter_png_svg(stem: &Path, s: &Scatter) -> Result<()> {
    if s.points.is_empty() {
        return Err(Error::Invalid(format!("{}: no points to plot", stem.display())));
    }
    render(stem, s)
}

impl Figure for Scatter {
    fn describe(&self) -> String {
        join_caption(&self.title, Some(&format!("{} points; x: {}; y: {}.", self.points.len(), self.x_label, self.y_label)))
    }
    fn size(&self) -> (u32, u32) {
        (if self.groups.is_empty() { 520 } else { 640 }, 440)
    }
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String> {
        if self.groups.is_empty() {
            return draw_scatter(root, self);
        }
        // The legend gets its own column right of the plot.
        let (w, h) = root.dim_in_pixel();
        let (plot, legend) = root.split_horizontally(w as i32 - 120);
        let _ = h;
        draw_scatter(plot, self)?;
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        let mut names: Vec<&str> = Vec::new();
        for g in &self.groups {
            if !names.contains(&g.as_str()) {
                names.push(g);
            }
        }
        legend.fill(&WHITE).map_err(e)?;
        let font = ("sans-serif", 12).into_font();
        for (k, n) in names.iter().enumerate() {
            let y = 50 + k as i32 * 18;
            legend.draw(&Circle::new((10, y + 6), 4, SERIES_COLORS[k % SERIES_COLORS.len()].filled())).map_err(e)?;
            legend.draw_text(n, &font.color(&BLACK), (20, y)).map_err(e)?;
        }
        legend.present().map_err(e)?;
        Ok(())
    }
    fn bad_value(&self) -> Option<String> {
        first_bad("a point", self.points.iter().flat_map(|(x, y)| [x, y]), false)
    }
}

/// One head of a [`HeadPairs`] gallery.
pub struct HeadPairRow {
    /// Row label (the head).
    pub label: String,
    /// Caption token × token attention, `labels.len()²`, row-major (rows = queries).
    pub text: Vec<f32>,
    /// CLS → patch attention, `grid²`, row-major.
    pub image_map: Vec<f32>,
}

/// "The same head on a caption and on its image": per row, the caption's token × token matrix
/// and the image overlay of the same (slot, head). Drawn with rectangles only (the image at
/// 32 px), so the SVG stays small.
pub struct HeadPairs<'a> {
    /// Title.
    pub title: String,
    /// The image.
    pub base: &'a RgbImage,
    /// Patch grid side.
    pub grid: usize,
    /// Token labels.
    pub labels: Vec<String>,
    /// One row per head.
    pub rows: Vec<HeadPairRow>,
}

impl HeadPairs<'_> {
    const CELL: i32 = 18;
    const IMG: u32 = 32;
    const SCALE: i32 = 6;
    const TOP: i32 = 40;
    const LEFT: i32 = 48;
    const LABEL_W: i32 = 90;
    fn panel(&self) -> i32 {
        (self.labels.len() as i32 * Self::CELL).max(Self::IMG as i32 * Self::SCALE)
    }
    /// Width of the caption column: its cells, or its heading where that is wider.
    fn text_w(&self) -> i32 {
        (self.labels.len() as i32 * Self::CELL).max(text::layout("caption (query × key)", 11.0).width + 8)
    }
}

impl Figure for HeadPairs<'_> {
    fn size(&self) -> (u32, u32) {
        let w = Self::LEFT + Self::LABEL_W + self.text_w() + 24 + Self::IMG as i32 * Self::SCALE + 16 + COLOR_BAR_W + 150;
        let h = Self::TOP + 20 + self.rows.len() as i32 * (self.panel() + 16);
        (w.max(640) as u32, h as u32)
    }
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String> {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        root.draw_text(&self.title, &("sans-serif", fitted_size(&self.title, root.dim_in_pixel().0, 15)).into_font().color(&BLACK), (8, 8))
            .map_err(e)?;
        let font = ("sans-serif", 11).into_font();
        let n = self.labels.len();
        let base = image::imageops::resize(self.base, Self::IMG, Self::IMG, image::imageops::FilterType::Triangle);
        let x_text = Self::LEFT + Self::LABEL_W;
        let x_img = x_text + self.text_w() + 24;
        root.draw_text("caption (query × key)", &font.color(&BLACK), (x_text, Self::TOP - 14)).map_err(e)?;
        root.draw_text("image (CLS → patches)", &font.color(&BLACK), (x_img, Self::TOP - 14)).map_err(e)?;
        for (r, row) in self.rows.iter().enumerate() {
            let y0 = Self::TOP + r as i32 * (self.panel() + 16);
            root.draw_text(&row.label, &("sans-serif", 14).into_font().color(&BLACK), (6, y0 + self.panel() / 2 - 7)).map_err(e)?;
            let hi = row.text.iter().cloned().fold(f32::MIN, f32::max).max(1e-12) as f64;
            for (i, label) in self.labels.iter().enumerate() {
                root.draw_text(label, &font.color(&BLACK), (Self::LEFT, y0 + i as i32 * Self::CELL + 1)).map_err(e)?;
                for j in 0..n {
                    let v = row.text[i * n + j] as f64 / hi;
                    let (x, y) = (x_text + j as i32 * Self::CELL, y0 + i as i32 * Self::CELL);
                    root.draw(&Rectangle::new([(x, y), (x + Self::CELL - 1, y + Self::CELL - 1)], heat(v).filled())).map_err(e)?;
                }
            }
            let up = upsample_normalized(&row.image_map, self.grid, Self::IMG as usize);
            for y in 0..Self::IMG {
                for x in 0..Self::IMG {
                    let (px, py) = (x_img + x as i32 * Self::SCALE, y0 + y as i32 * Self::SCALE);
                    let col = blend(base.get_pixel(x, y), up[(y * Self::IMG + x) as usize], 0.55);
                    root.draw(&Rectangle::new([(px, py), (px + Self::SCALE, py + Self::SCALE)], col.filled())).map_err(e)?;
                }
            }
        }
        // One bar for both kinds of map: caption cells on the attention scale itself (divided
        // by the matrix maximum, which is 1: the first, causal, query attends only to itself),
        // image maps each from their own minimum to maximum (said under the bar).
        let bx = x_img + Self::IMG as i32 * Self::SCALE + 16;
        draw_color_bar(&root, ColorScale::Fixed(0.0, 1.0), (0.0, 1.0), (bx, Self::TOP), self.panel(), "")?;
        for (k, line) in ["caption: attention 0–1", "image: each map", "min → max"].iter().enumerate() {
            root.draw_text(line, &font.color(&BLACK), (bx - 4, Self::TOP + self.panel() + 6 + 13 * k as i32)).map_err(e)?;
        }
        root.present().map_err(e)?;
        Ok(())
    }
}

/// Round tick values in `[lo, hi]`: a step of 1, 2 or 5 × 10^k giving about `target` ticks,
/// and the decimals that print the step exactly.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, usize) {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || target == 0 {
        return (vec![], 0);
    }
    let raw = (hi - lo) / target as f64;
    let e = raw.log10().floor();
    let f = raw / 10f64.powf(e);
    let nf = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    let step = nf * 10f64.powf(e);
    let digits = (-(step.log10().floor())).max(0.0) as usize;
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    // A zero that rounds to -0.0 prints as "0".
    // k·nf / 10^-e rather than k·step: 3 × 0.1 is 0.30000000000000004, 3 / 10 is 0.3.
    let at = |k: i64| if e < 0.0 { k as f64 * nf / 10f64.powi(-e as i32) } else { k as f64 * nf * 10f64.powi(e as i32) };
    let ticks = (first..=last).map(at).map(|v| if v.abs() < step * 1e-9 { 0.0 } else { v }).collect();
    (ticks, digits)
}

/// One panel of [`IntervalPanels`]: the metric's name and `(mean, lo, hi)` per model.
pub type IntervalPanel = (String, Vec<(f64, f64, f64)>);

/// Point estimates with 95 % intervals, one panel per metric, models as rows (each in its
/// colour across figures): the comparison tables as a figure.
#[derive(Default)]
pub struct IntervalPanels {
    /// Title.
    pub title: String,
    /// Model names, top to bottom.
    pub models: Vec<String>,
    /// Per panel: the metric's name and `(mean, lo, hi)` per model (NaN = missing).
    pub panels: Vec<IntervalPanel>,
    /// Per panel, per model: individual values drawn as small circles (per-seed values);
    /// empty = none.
    pub dots: Vec<Vec<Vec<f64>>>,
    /// A vertical reference line (0 for differences), included in every panel's range.
    pub reference: Option<f64>,
    /// Per panel: a labelled vertical reference of that panel alone (chance level), included
    /// in its range; empty or `None` = none.
    pub panel_refs: Vec<Option<(f64, String)>>,
    /// Explanatory text under the figure.
    pub caption: Option<String>,
}

impl IntervalPanels {
    const PANEL_W: i32 = 230;
    const ROW: i32 = 26;
    /// Left of the panels: 150 px, or the widest model label plus a margin.
    fn left(&self) -> i32 {
        self.models.iter().map(|m| text::layout(m, 13.0).width + 16).max().unwrap_or(0).max(150)
    }
    const TOP: i32 = 60;
    /// Panels per row of the grid.
    const COLS: usize = 4;
    /// Height of one row of panels: its models plus the metric name above and the axis below.
    fn block_h(&self) -> i32 {
        self.models.len() as i32 * Self::ROW + 70
    }
    fn grid(&self) -> (usize, usize) {
        let cols = self.panels.len().clamp(1, Self::COLS);
        (cols, self.panels.len().div_ceil(cols).max(1))
    }
}

impl Figure for IntervalPanels {
    fn describe(&self) -> String {
        join_caption(&self.title, self.caption.as_deref())
    }
    fn size(&self) -> (u32, u32) {
        let (cols, rows) = self.grid();
        let w = self.left() + cols as i32 * Self::PANEL_W + 20;
        let w = w.max(600);
        // The caption's wrapped lines (at most 4, as drawn), the degenerate-interval note
        // included.
        let degenerate = self.panels.iter().flat_map(|(_, v)| v).any(|(m, l, h)| m.is_finite() && l.is_finite() && (h - l).abs() < 1e-12);
        let text = format!(
            "{}{}",
            self.caption.as_deref().unwrap_or(""),
            if degenerate {
                " Hollow dot: an interval of zero width (no spread at all, e.g. every item or seed scored the same), not a precise estimate."
            } else {
                ""
            }
        );
        let lines = if text.trim().is_empty() { 0 } else { wrap(text.trim(), (w as usize).saturating_sub(20) / 7).len().min(4) as i32 };
        let h = Self::TOP - 26 + rows as i32 * self.block_h() + if lines > 0 { 34 + 17 * lines + 12 } else { 0 };
        (w as u32, h as u32)
    }
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, plotters::coord::Shift>) -> std::result::Result<(), String> {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let font = ("sans-serif", 13).into_font();
        root.draw_text(&self.title, &("sans-serif", 16).into_font().color(&BLACK), (10, 8)).map_err(e)?;
        let (cols, rows) = self.grid();
        for block in 0..rows {
            let top = Self::TOP + block as i32 * self.block_h();
            for (r, m) in self.models.iter().enumerate() {
                root.draw_text(m, &font.color(&BLACK), (8, top + r as i32 * Self::ROW + 6)).map_err(e)?;
            }
        }
        let mut degenerate = false;
        let mut bottom = 0;
        for (p, (metric, vals)) in self.panels.iter().enumerate() {
            let top = Self::TOP + (p / cols) as i32 * self.block_h();
            let axis = top + self.models.len() as i32 * Self::ROW;
            bottom = bottom.max(axis);
            let x0 = self.left() + (p % cols) as i32 * Self::PANEL_W;
            let (x_lo, x_hi) = (x0 + 10, x0 + Self::PANEL_W - 20);
            root.draw_text(metric, &font.color(&BLACK), (x0 + 10, top - 26)).map_err(e)?;
            let panel_dots: &[Vec<f64>] = self.dots.get(p).map_or(&[], |d| d.as_slice());
            let panel_ref = self.panel_refs.get(p).and_then(|r| r.as_ref()).filter(|(v, _)| v.is_finite());
            let finite: Vec<f64> =
                vals.iter().flat_map(|v| [v.0, v.1, v.2]).chain(panel_dots.iter().flatten().copied()).filter(|v| v.is_finite()).collect();
            // A panel reference (chance) within a data span of the data joins the axis; one
            // farther away would squeeze the intervals into a few pixels, so it is named at
            // the panel's edge with its value and an arrow instead.
            let (d_lo, d_hi) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let d_span = (d_hi - d_lo).max(1e-9);
            let (panel_ref, off_axis) = match panel_ref {
                Some(r) if finite.is_empty() || (r.0 >= d_lo - d_span && r.0 <= d_hi + d_span) => (Some(r), None),
                Some(r) => (None, Some(r)),
                None => (None, None),
            };
            let finite: Vec<f64> =
                finite.into_iter().chain(self.reference).chain(panel_ref.map(|r| r.0)).filter(|v| v.is_finite()).collect();
            let (mut lo, mut hi) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            // Also when nothing is finite (lo = MAX, hi = MIN).
            if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
                (lo, hi) = (lo - 0.5, lo + 0.5);
            }
            let span = hi - lo;
            let (lo, hi) = (lo - 0.08 * span, hi + 0.08 * span);
            let px = |v: f64| x_lo + ((v - lo) / (hi - lo) * (x_hi - x_lo) as f64).round() as i32;
            root.draw(&PathElement::new(vec![(x_lo, axis + 4), (x_hi, axis + 4)], BLACK.stroke_width(1))).map_err(e)?;
            // Round ticks (1, 2 or 5 × 10^k apart), only where their labels stay inside the
            // panel, so labels of neighbouring panels never touch.
            let (ticks, digits) = nice_ticks(lo, hi, 3);
            for v in ticks {
                let x = px(v);
                if x < x_lo + 14 || x > x_hi - 14 {
                    continue;
                }
                root.draw(&PathElement::new(vec![(x, axis + 4), (x, axis + 8)], BLACK.stroke_width(1))).map_err(e)?;
                let label = format!("{v:.digits$}");
                root.draw_text(&label, &("sans-serif", 11).into_font().color(&BLACK), (x - 3 * label.len() as i32, axis + 10))
                    .map_err(e)?;
            }
            if let Some(rv) = self.reference {
                let x = px(rv);
                for y in (top..axis).step_by(6) {
                    root.draw(&PathElement::new(vec![(x, y), (x, (y + 3).min(axis))], RGBColor(90, 90, 90).stroke_width(1))).map_err(e)?;
                }
            }
            if let Some((rv, label)) = off_axis {
                let grey = RGBColor(120, 120, 120);
                let text = if *rv < lo { format!("◂ {label} {rv:.3}") } else { format!("{label} {rv:.3} ▸") };
                let w = text::layout(&text, 10.0).width;
                let lx = if *rv < lo { x_lo } else { x_hi - w };
                root.draw_text(&text, &("sans-serif", 10).into_font().color(&grey), (lx, top - 11)).map_err(e)?;
            }
            if let Some((rv, label)) = panel_ref {
                // Dotted, in grey, its label just above the first row (below the metric name).
                let x = px(*rv);
                let grey = RGBColor(120, 120, 120);
                for y in (top - 2..axis).step_by(4) {
                    root.draw(&PathElement::new(vec![(x, y), (x, (y + 1).min(axis))], grey.stroke_width(1))).map_err(e)?;
                }
                let w = 6 * label.chars().count() as i32;
                let lx = if x + 4 + w <= x_hi + 16 { x + 4 } else { x - 4 - w };
                root.draw_text(label, &("sans-serif", 10).into_font().color(&grey), (lx, top - 11)).map_err(e)?;
            }
            for (r, (m, (mean, l, h))) in self.models.iter().zip(vals).enumerate() {
                let y = top + r as i32 * Self::ROW + 12;
                let col = series_color(m, r);
                root.draw(&PathElement::new(vec![(x_lo, y), (x_hi, y)], RGBColor(225, 225, 225).stroke_width(1))).map_err(e)?;
                for v in panel_dots.get(r).into_iter().flatten().filter(|v| v.is_finite()) {
                    root.draw(&Circle::new((px(*v), y - 7), 2, col.stroke_width(1))).map_err(e)?;
                }
                if l.is_finite() && h.is_finite() {
                    root.draw(&PathElement::new(vec![(px(*l), y), (px(*h), y)], col.stroke_width(3))).map_err(e)?;
                }
                if mean.is_finite() {
                    // An interval of zero width (every resample or seed gave the same value)
                    // carries no uncertainty information: drawn hollow, and said below.
                    if l.is_finite() && h.is_finite() && (h - l).abs() < 1e-12 {
                        root.draw(&Circle::new((px(*mean), y), 5, col.stroke_width(2))).map_err(e)?;
                        degenerate = true;
                    } else {
                        root.draw(&Circle::new((px(*mean), y), 5, col.filled())).map_err(e)?;
                    }
                }
            }
        }
        let with_note;
        let caption = if degenerate {
            with_note = format!(
                "{} Hollow dot: an interval of zero width (no spread at all, e.g. every item or seed scored the same), not a precise estimate.",
                self.caption.as_deref().unwrap_or("")
            );
            Some(&with_note)
        } else {
            self.caption.as_ref()
        };
        if let Some(text) = caption {
            let (w, _) = root.dim_in_pixel();
            for (k, line) in wrap(text, (w as usize).saturating_sub(20) / 7).iter().enumerate().take(4) {
                root.draw_text(line, &font.color(&BLACK), (10, bottom + 34 + 17 * k as i32)).map_err(e)?;
            }
        }
        root.present().map_err(e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tick_tests {
    use super::{nice_ticks, robust_top};

    #[test]
    fn one_outlier_does_not_set_the_scale() {
        // 40 values in [0, 0.1] and one at 0.6: the top is the 95th percentile.
        let mut v: Vec<f64> = (0..40).map(|i| i as f64 * 0.0025).collect();
        v.push(0.6);
        let top = robust_top(v.iter().copied(), (0.0, 0.6)).unwrap();
        assert!((top - 0.095).abs() < 0.006, "{top}");
        // An even spread keeps its full range; so do short lists.
        let even: Vec<f64> = (0..41).map(|i| i as f64 * 0.015).collect();
        assert_eq!(robust_top(even.iter().copied(), (0.0, 0.6)), None);
        assert_eq!(robust_top([0.0, 0.1, 0.6].into_iter(), (0.0, 0.6)), None);
    }

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(nice_ticks(0.272, 0.532, 3), (vec![0.3, 0.4, 0.5], 1));
        assert_eq!(nice_ticks(0.0205, 0.0495, 3), (vec![0.03, 0.04], 2));
        assert_eq!(nice_ticks(-0.13, 0.11, 3), (vec![-0.1, 0.0, 0.1], 1));
        let (t, d) = nice_ticks(12.0, 980.0, 4);
        assert_eq!((t, d), (vec![200.0, 400.0, 600.0, 800.0], 0));
        assert!(nice_ticks(1.0, 1.0, 3).0.is_empty() && nice_ticks(f64::NAN, 1.0, 3).0.is_empty());
    }
}

#[cfg(test)]
mod finite_tests {
    use super::*;

    /// Non-finite data are refused before anything is drawn or written (NaN points once made
    /// the tick loop spin); NaN stays allowed where it means "missing" (interval panels).
    #[test]
    fn plots_refuse_non_finite_data() {
        let dir = std::env::temp_dir().join(format!("msclip-plot-finite-{}", std::process::id()));
        let chart = |y: f64| LineChart {
            title: "t".into(),
            series: vec![("a".into(), vec![(0.0, 1.0), (1.0, y)])],
            bands: vec![None],
            y_range: (0.0, 2.0),
            ..Default::default()
        };
        for bad in [f64::NAN, f64::INFINITY] {
            let err = line_chart_png_svg(&dir.join("c"), &chart(bad)).unwrap_err();
            assert!(matches!(err, Error::Numeric(_)) && err.to_string().contains("series \"a\""), "{err}");
        }
        assert!(!dir.join("c.png").exists());
        let s = Scatter {
            title: "s".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            points: vec![(0.0, f64::NAN), (1.0, 1.0)],
            groups: vec![],
        };
        assert!(matches!(scatter_png_svg(&dir.join("s"), &s), Err(Error::Numeric(_))));
        line_chart_png_svg(&dir.join("ok"), &chart(1.5)).unwrap();
        let p = IntervalPanels {
            title: "p".into(),
            models: vec!["m".into()],
            panels: vec![("x".into(), vec![(f64::NAN, f64::NAN, f64::NAN)])],
            ..Default::default()
        };
        render(&dir.join("p"), &p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod figure_tests {
    use super::*;

    fn pixel(buf: &[u8], w: u32, x: i32, y: i32) -> [u8; 3] {
        let i = ((y as u32 * w + x as u32) * 3) as usize;
        [buf[i], buf[i + 1], buf[i + 2]]
    }

    fn overlaps(boxes: &[text::TextBox]) -> Vec<String> {
        let mut out = vec![];
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                if a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3 {
                    out.push(format!("{:?} overlaps {:?}", a, b));
                }
            }
        }
        out
    }

    fn heatmap(title: &str, values: Vec<Vec<f64>>, scale: ColorScale) -> Heatmap {
        let (r, c) = (values.len(), values[0].len());
        Heatmap {
            title: title.into(),
            values,
            row_labels: (0..r).map(|i| format!("slot {i}")).collect(),
            col_labels: (0..c).map(|i| format!("head {i}")).collect(),
            scale,
            unit: "units".into(),
            caption: None,
        }
    }

    /// Column labels wider than a cell ("<sot>", caption words) widen the cells instead of
    /// running into each other.
    #[test]
    fn wide_column_labels_widen_the_cells() {
        let mut m = heatmap("t", vec![vec![0.1, 0.2, 0.3]], ColorScale::Sequential);
        m.col_labels = vec!["<start_of_text>".into(), "a".into(), "colour".into()];
        let (_, _, _, boxes) = render_to_buffer(&m).unwrap();
        assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
    }

    /// Panels that claim one shared scale keep it when outliers are clipped: the clipping is
    /// decided over every panel at once, so one value maps to one colour in every column.
    #[test]
    fn shared_scale_survives_outlier_clipping() {
        let bulk = |k: usize| (0..5).map(|c| 0.002 * (k * 5 + c) as f64 - 0.02).collect::<Vec<f64>>();
        let mut a_vals: Vec<Vec<f64>> = (0..5).map(bulk).collect();
        a_vals[0][0] = 0.01;
        a_vals[2][2] = -1.0;
        // Panel b alone spans only ±0.014: a scale of its own would colour 0.01 much darker.
        let mut b_vals: Vec<Vec<f64>> = (0..5).map(|k| bulk(k).iter().map(|v| 0.5 * v).collect()).collect();
        b_vals[0][0] = 0.01;
        let p = HeatmapPanels {
            title: "shared".into(),
            panels: vec![vec![heatmap("a", a_vals, ColorScale::Diverging), heatmap("b", b_vals, ColorScale::Diverging)]],
            shared_scale: true,
            missing: None,
            caption: Some("Per head: a signed importance on the shared colour scale; one outlier head is clipped and marked, the rest keep their colours. This caption wraps over several lines under the panels.".into()),
        };
        let (buf, w, h, boxes) = render_to_buffer(&p).unwrap();
        assert!(boxes.iter().any(|b| b.4.starts_with("Per head: a signed")), "the caption is drawn");
        assert!(boxes.iter().all(|b| b.2 <= w as i32 && b.3 <= h as i32), "inside the figure: {boxes:?}");
        assert!(p.describe().contains("This caption wraps"), "and described");
        assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
        let (pw, _) = p.panel_size();
        let (lw, cell) = (p.label_w(), HeatmapPanels::CELL);
        let (x_a, y) = (8 + lw + cell / 2, 56 + 36 + cell / 2);
        assert_eq!(pixel(&buf, w, x_a, y), pixel(&buf, w, x_a + pw, y), "0.01 in both panels");
        assert!(boxes.iter().any(|b| b.4 == "▼"), "{boxes:?}");
    }

    /// A model keeps its colour and marker whatever its position among the series (the
    /// seed-0 figures plot 3 models, the study figures 5); families at other scales match.
    #[test]
    fn a_model_looks_the_same_in_every_figure() {
        for (name, other) in [("tiny-clip", "clip-b32"), ("tiny-msclip", "msclip-b32"), ("tiny-msclip-s", "msclip-s-b16")] {
            let shapes: Vec<usize> = (0..5).map(|i| series_shape(name, i)).collect();
            assert!(shapes.iter().all(|&s| s == shapes[0]), "{name}: {shapes:?}");
            assert_eq!(series_shape(other, 3), shapes[0]);
            assert_eq!(series_color(name, 0), series_color(name, 4));
        }
        // The world a model was trained on does not change its look.
        assert_eq!(series_color("tiny-clip-relations", 3), series_color("tiny-clip", 0));
        assert_eq!(series_shape("tiny-msclip-s-relations", 0), series_shape("tiny-msclip-s", 4));
        let five = ["tiny-clip", "tiny-msclip-attn", "tiny-msclip", "tiny-msclip-ln", "tiny-msclip-s"];
        let mut shapes: Vec<usize> = five.iter().enumerate().map(|(i, n)| series_shape(n, i) % 5).collect();
        shapes.sort();
        assert_eq!(shapes, vec![0, 1, 2, 3, 4], "five models, five shapes");
        // The unshared ablation of MS-CLIP-S: CLIP's shape, a colour of its own.
        assert_eq!(series_shape("tiny-clip-s", 2), series_shape("tiny-clip", 0));
        let seven = ["tiny-clip", "tiny-msclip-attn", "tiny-msclip", "tiny-msclip-ln", "tiny-clip-msnorm", "tiny-clip-s", "tiny-msclip-s"];
        let mut colors: Vec<RGBColor> = seven.iter().enumerate().map(|(i, n)| series_color(n, i)).collect();
        colors.sort_by_key(|c| (c.0, c.1, c.2));
        colors.dedup();
        assert_eq!(colors.len(), 7, "seven models, seven colours");
    }

    /// Per-seed dots are drawn in their series' colour, translucent, where the values are:
    /// seeds far above and below a flat mean put dots in both halves of the plot; without
    /// dots no pixel of that tint exists.
    #[test]
    fn line_charts_draw_per_seed_dots() {
        let chart = |dots: bool| LineChart {
            title: "zero-shot".into(),
            x_label: "step".into(),
            y_label: "top-1".into(),
            series: vec![("tiny-clip".into(), vec![(0.0, 0.5), (50.0, 0.5), (100.0, 0.5)])],
            bands: vec![None],
            y_range: (0.0, 1.0),
            x_integer: true,
            dots: if dots { vec![Some(vec![(0.0, 0.1), (50.0, 0.1), (100.0, 0.9), (50.0, 0.9)])] } else { vec![] },
            ..Default::default()
        };
        let col = series_color("tiny-clip", 0);
        let tint = [col.0, col.1, col.2].map(|c| (0.45 * c as f64 + 0.55 * 255.0).round() as i32);
        let count = |c: &LineChart| {
            let (buf, w, h, _) = render_to_buffer(c).unwrap();
            let mut halves = [0usize; 2];
            for y in 0..h {
                for x in 0..w - 190 {
                    let p = pixel(&buf, w, x as i32, y as i32);
                    if p.iter().zip(tint).all(|(a, t)| (*a as i32 - t).abs() <= 3) {
                        halves[(2 * y / h).min(1) as usize] += 1;
                    }
                }
            }
            halves
        };
        let [upper, lower] = count(&chart(true));
        assert!(upper >= 8 && lower >= 8, "dots above and below the mean: {upper}, {lower}");
        assert_eq!(count(&chart(false)), [0, 0]);
    }

    /// A long caption under a narrow heatmap is drawn whole (the figure widens), never cut
    /// off mid-sentence: its last word is on the figure.
    #[test]
    fn long_captions_are_drawn_whole() {
        let mut m = heatmap("narrow", vec![vec![0.1, 0.2], vec![0.3, 0.4]], ColorScale::Sequential);
        let caption = "Per head, averaged over queries and 200 held-out items: the attention mass on the special token (CLS for vision, SOT for text); the causal mask gives early text queries little else to attend to. Compare heads within a tower; across towers, use the transfer analysis (statistics made comparable, with nulls). END";
        m.caption = Some(caption.into());
        let (_, w, h, boxes) = render_to_buffer(&m).unwrap();
        assert!(boxes.iter().any(|b| b.4.ends_with("END")), "{boxes:?}");
        assert!(boxes.iter().all(|b| b.2 <= w as i32 && b.3 <= h as i32), "inside the figure: {boxes:?}");
        assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
    }

    /// The head gallery carries its colour bar too: right of the image column, viridis from
    /// its top (1) to its bottom (0), with what each kind of map is scaled to.
    #[test]
    fn head_gallery_carries_a_colour_bar() {
        let base = RgbImage::from_pixel(32, 32, image::Rgb([200, 200, 200]));
        let g = HeadPairs {
            title: "gallery".into(),
            base: &base,
            grid: 2,
            labels: vec!["<sot>".into(), "a".into()],
            rows: vec![HeadPairRow { label: "h0".into(), text: vec![1.0, 0.0, 0.4, 0.6], image_map: vec![0.1, 0.2, 0.3, 0.4] }],
        };
        let (buf, w, _, boxes) = render_to_buffer(&g).unwrap();
        let bx = HeadPairs::LEFT + HeadPairs::LABEL_W + g.text_w() + 24 + HeadPairs::IMG as i32 * HeadPairs::SCALE + 16 + 7;
        let h = g.panel();
        for (k, v) in [(2, 1.0 - 2.0 / (h - 1) as f64), (h - 3, 2.0 / (h - 1) as f64)] {
            let got = pixel(&buf, w, bx, HeadPairs::TOP + k);
            let want = ColorScale::Fixed(0.0, 1.0).color(v, (0.0, 1.0));
            let d = got.iter().zip([want.0, want.1, want.2]).map(|(a, b)| (*a as i32 - b as i32).abs()).max().unwrap();
            assert!(d <= 8, "bar at {k}: {got:?} vs {want:?}");
        }
        assert!(boxes.iter().any(|b| b.4 == "min → max"), "{boxes:?}");
        assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
    }

    /// Long row labels ("slot 0 (shared)") push the cells right instead of running under
    /// them: just right of every row label the figure is still white.
    #[test]
    fn long_row_labels_push_the_cells_right() {
        let mut m = heatmap("t", vec![vec![0.1, 0.2], vec![0.3, 0.4]], ColorScale::Sequential);
        m.row_labels = vec!["slot 0 (shared)".into(), "slot 1 (shared)".into()];
        let (buf, w, _, boxes) = render_to_buffer(&m).unwrap();
        for b in boxes.iter().filter(|b| b.4.ends_with("(shared)")) {
            assert_eq!(pixel(&buf, w, b.2 + 2, (b.1 + b.3) / 2), [255, 255, 255], "{b:?}");
        }
        assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
    }

    /// Every heatmap has its colour bar right of the cells: a strip whose colours run from
    /// the scale's top colour to its bottom colour; signed values use the diverging map,
    /// white at 0.
    #[test]
    fn heatmaps_carry_a_colour_bar_of_their_scale() {
        for scale in [ColorScale::Sequential, ColorScale::Diverging] {
            let m = heatmap("t", vec![vec![-0.5, 0.1, 0.9], vec![0.2, 0.4, f64::NAN]], scale);
            let (buf, w, _, boxes) = render_to_buffer(&m).unwrap();
            let range = scale.range(m.values.iter().flatten());
            // Cells at (70, 60), 34 px; the bar 16 px right of the last column, 2 rows high.
            let (bx, top, h) = (70 + 3 * 34 + 16 + 7, 60, 2 * 34 - 2);
            // Two pixels inside the bar's black border at each end.
            for (k, want_v) in [
                (2, range.1 - (range.1 - range.0) * 2.0 / (h - 1) as f64),
                (h - 3, range.0 + (range.1 - range.0) * 2.0 / (h - 1) as f64),
                ((h - 1) / 2, 0.5 * (range.0 + range.1)),
            ] {
                let got = pixel(&buf, w, bx, top + k);
                let want = scale.color(want_v, range);
                let d = got.iter().zip([want.0, want.1, want.2]).map(|(a, b)| (*a as i32 - b as i32).abs()).max().unwrap();
                assert!(d <= 8, "{scale:?} bar at {k}: {got:?} vs {want:?}");
            }
            if scale == ColorScale::Diverging {
                assert_eq!(range.0, -range.1);
                let mid = pixel(&buf, w, bx, top + (h - 1) / 2);
                assert!(mid.iter().all(|c| *c > 240), "0 is white: {mid:?}");
            }
            assert!(boxes.iter().any(|b| b.4 == "units"), "the bar names its unit");
            assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
        }
    }

    /// Panels that share a column's scale map one value to one colour.
    #[test]
    fn panels_sharing_a_scale_map_one_value_to_one_colour() {
        let a = heatmap("model a", vec![vec![0.3, 1.0]], ColorScale::Sequential);
        let b = heatmap("model b", vec![vec![0.0, 0.3]], ColorScale::Sequential);
        let p = HeatmapPanels { title: "shared".into(), panels: vec![vec![a], vec![b]], shared_scale: false, missing: None, caption: None };
        let (buf, w, _, boxes) = render_to_buffer(&p).unwrap();
        let (_, ph) = p.panel_size();
        let cell = HeatmapPanels::CELL;
        // Cell (0, 0) of panel a and cell (0, 1) of panel b both hold 0.3.
        let lw = p.label_w();
        let (x_a, y_a) = (8 + lw + cell / 2, 56 + 36 + cell / 2);
        let (x_b, y_b) = (8 + lw + cell + cell / 2, 56 + ph + 36 + cell / 2);
        assert_eq!(pixel(&buf, w, x_a, y_a), pixel(&buf, w, x_b, y_b));
        assert_ne!(pixel(&buf, w, x_a, y_a), pixel(&buf, w, x_a + cell, y_a), "0.3 and 1.0 differ");
        assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
    }

    /// Line charts, interval panels and scatters lay out their text without overlaps.
    #[test]
    fn no_text_box_overlaps_another() {
        let chart = LineChart {
            title: "Training — zero-shot top-1".into(),
            x_label: "step".into(),
            y_label: "top-1".into(),
            series: vec![("tiny-clip".into(), vec![(0.0, 0.1), (100.0, 0.5)]), ("tiny-msclip-s".into(), vec![(0.0, 0.2), (100.0, 0.7)])],
            bands: vec![None, None],
            y_range: (0.0, 1.0),
            x_integer: true,
            caption: Some("Line: mean over 8 seeds; bars: Student-t 95 % interval.".into()),
            ..Default::default()
        };
        let panels = IntervalPanels {
            title: "Sharing spectrum".into(),
            models: vec!["tiny-clip".into(), "tiny-msclip-attn".into(), "tiny-msclip-s".into()],
            panels: vec![
                ("zero-shot top-1".into(), vec![(0.3, 0.28, 0.33), (0.31, 0.29, 0.34), (0.5, 0.47, 0.53)]),
                ("R@1 i→t".into(), vec![(0.2, 0.18, 0.22), (0.21, 0.2, 0.23), (0.4, 0.38, 0.42)]),
            ],
            reference: Some(0.0),
            panel_refs: vec![Some((0.1, "chance".into())), Some((0.95, "full model".into()))],
            caption: Some("Dot: the mean; bar: its 95 % interval.".into()),
            ..Default::default()
        };
        let scatter = Scatter {
            title: "importance".into(),
            x_label: "text".into(),
            y_label: "vision".into(),
            points: vec![(0.0, 0.1), (1.0, 0.5), (0.5, 0.2)],
            groups: vec!["slot 1".into(), "slot 2".into(), "slot 1".into()],
        };
        // A reference near the data joins the axis (a labelled line); one far from it (0.95
        // beside data at 0.18–0.42) is named at the panel's edge, keeping the intervals wide.
        let boxes = render_to_buffer(&panels).unwrap().3;
        assert_eq!(boxes.iter().filter(|b| b.4 == "chance").count(), 1, "{boxes:?}");
        assert_eq!(boxes.iter().filter(|b| b.4 == "full model 0.950 ▸").count(), 1, "{boxes:?}");
        for (name, boxes) in [
            ("line chart", render_to_buffer(&chart).unwrap().3),
            ("interval panels", render_to_buffer(&panels).unwrap().3),
            ("scatter", render_to_buffer(&scatter).unwrap().3),
        ] {
            assert!(boxes.len() >= 3, "{name}: {boxes:?}");
            let o = overlaps(&boxes);
            assert!(o.is_empty(), "{name}: {o:?}");
        }
    }

    /// A reference line's label goes where the data lines do not cross it: data that zigzag
    /// across the chance line on the left leave no pixel of their colour inside the label's
    /// box (a label fixed at the left end, above or below, would sit on them).
    #[test]
    fn reference_labels_avoid_the_data() {
        let chart = LineChart {
            title: "relation test".into(),
            x_label: "step".into(),
            y_label: "share".into(),
            series: vec![(
                "tiny-clip".into(),
                vec![(0.0, 0.54), (25.0, 0.46), (50.0, 0.54), (75.0, 0.46), (100.0, 0.5), (200.0, 0.9), (300.0, 0.95), (400.0, 0.95)],
            )],
            bands: vec![None],
            y_range: (0.0, 1.0),
            hlines: vec![(0.5, "chance".into())],
            ..Default::default()
        };
        let (buf, w, _, boxes) = render_to_buffer(&chart).unwrap();
        let b = boxes.iter().find(|b| b.4 == "chance").expect("the line is labelled");
        let col = series_color("tiny-clip", 0);
        let near = |p: [u8; 3]| p.iter().zip([col.0, col.1, col.2]).all(|(a, c)| (*a as i32 - c as i32).abs() <= 40);
        let inside = (b.0..b.2).flat_map(|x| (b.1..b.3).map(move |y| (x, y))).filter(|&(x, y)| near(pixel(&buf, w, x, y))).count();
        assert_eq!(inside, 0, "label box {b:?} holds {inside} data pixels");
    }

    /// One outlier cell does not flatten a diverging map: the scale clips at the bulk's
    /// |value|, the small values keep visible colour, and the outlier carries ▼.
    #[test]
    fn diverging_outliers_are_clipped_and_marked() {
        let mut values: Vec<Vec<f64>> = (0..5).map(|r| (0..5).map(|c| 0.002 * (r * 5 + c) as f64 - 0.02).collect()).collect();
        values[2][2] = -1.0;
        let m = heatmap("signed", values, ColorScale::Diverging);
        let (buf, w, _, boxes) = render_to_buffer(&m).unwrap();
        assert!(boxes.iter().any(|b| b.4 == "▼"), "{boxes:?}");
        assert!(boxes.iter().any(|b| b.4.contains("outliers")), "the clipping is said");
        // Cell (4, 4) holds +0.028: far from white once the scale is no longer ±1.
        let cell = m.cell();
        let p = pixel(&buf, w, 70 + 4 * cell + cell / 2, 60 + 4 * cell + cell / 2);
        assert!(p[1] < 180, "a visible red: {p:?}");
        assert!(overlaps(&boxes).is_empty(), "{:?}", overlaps(&boxes));
    }
}

#[cfg(test)]
mod caption_tests {
    use super::*;

    /// The caption travels with the figure: in the PNG's Description chunk and the SVG's
    /// <desc>, read back as written.
    #[test]
    fn figures_carry_their_caption() {
        let dir = std::env::temp_dir().join(format!("msclip-caption-{}", std::process::id()));
        let chart = LineChart {
            title: "Zero-shot <top-1> & more".into(),
            series: vec![("a".into(), vec![(0.0, 0.1), (1.0, 0.2)])],
            bands: vec![None],
            y_range: (0.0, 1.0),
            caption: Some("Mean over 8 seeds.".into()),
            ..Default::default()
        };
        line_chart_png_svg(&dir.join("c"), &chart).unwrap();
        let svg = std::fs::read_to_string(dir.join("c.svg")).unwrap();
        assert_eq!(svg_caption(&svg).unwrap(), "Zero-shot <top-1> & more. Mean over 8 seeds.");
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join("c.png")).unwrap()));
        let reader = decoder.read_info().unwrap();
        let texts: Vec<String> = reader.info().utf8_text.iter().map(|t| t.get_text().unwrap()).collect();
        assert!(texts.iter().any(|t| t == "Zero-shot <top-1> & more. Mean over 8 seeds."), "{texts:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
