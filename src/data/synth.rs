//! The built-in synthetic world: procedural images of coloured shapes with compositional
//! captions and ground-truth boxes linking caption words to objects. Deterministic from a seed.

use serde::Serialize;

/// Shapes the world draws.
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "diamond", "cross", "ring"];
/// Colours and their RGB values.
pub const COLORS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 215, 40]),
    ("purple", [150, 60, 190]),
    ("orange", [245, 140, 30]),
    ("white", [245, 245, 245]),
    ("black", [25, 25, 25]),
];
/// Object sizes.
pub const SIZES: [&str; 2] = ["small", "large"];

/// Which synthetic world a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum World {
    /// One to three objects of 6 shapes × 8 colours × 2 sizes; captions name each object and
    /// the relation of the first two.
    #[default]
    Shapes,
    /// Always two small objects of 3 shapes × 3 colours (circle, square, triangle; red,
    /// green, blue), caption "a small red circle left of a small blue square". With 45
    /// unordered object pairs, a batch of 64 often holds the same pair in another arrangement,
    /// so matching captions to images needs where the objects are, not only what they are.
    Relations,
}

/// The attributes a world draws from (indices into [`SHAPES`] and [`COLORS`], and whether
/// objects may be small).
struct Palette {
    shapes: &'static [usize],
    colors: &'static [usize],
    sizes: &'static [bool],
}

const FULL: Palette = Palette { shapes: &[0, 1, 2, 3, 4, 5], colors: &[0, 1, 2, 3, 4, 5, 6, 7], sizes: &[false, true] };
const RELATIONS: Palette = Palette { shapes: &[0, 1, 2], colors: &[0, 1, 2], sizes: &[false] };

/// A drawn object and the caption words that refer to it.
#[derive(Debug, Clone, Serialize)]
pub struct Object {
    /// One of [`SHAPES`].
    pub shape: String,
    /// One of [`COLORS`].
    pub color: String,
    /// One of [`SIZES`].
    pub size: String,
    /// Box `[x0, y0, x1, y1]` in pixels (exclusive end).
    pub bbox: [u32; 4],
    /// Indices of the whitespace-separated caption words naming this object.
    pub word_indices: Vec<usize>,
}

/// An RGB image with its caption and ground truth.
#[derive(Debug, Clone, Serialize)]
pub struct Scene {
    /// RGB bytes, row-major.
    #[serde(skip)]
    pub pixels: Vec<u8>,
    /// Side in pixels.
    pub size: u32,
    /// The caption.
    pub caption: String,
    /// The drawn objects.
    pub objects: Vec<Object>,
}

/// The world's source of randomness (the crate's one generator).
pub type Rng = crate::rng::SplitMix64;

fn inside(shape: &str, dx: f64, dy: f64) -> bool {
    // (dx, dy) relative to the centre, scaled so the shape fits in [-1, 1]².
    match shape {
        "circle" => dx * dx + dy * dy <= 1.0,
        "square" => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        "triangle" => (-0.9..=0.9).contains(&dy) && dx.abs() <= (dy + 0.9) / 1.8 * 0.95,
        "diamond" => dx.abs() + dy.abs() <= 1.0,
        "cross" => (dx.abs() <= 0.3 && dy.abs() <= 0.95) || (dy.abs() <= 0.3 && dx.abs() <= 0.95),
        "ring" => {
            let r = dx * dx + dy * dy;
            (0.36..=1.0).contains(&r)
        }
        _ => false,
    }
}

/// Renders one scene of `n_objects` (1..=3) objects on a textured background.
pub fn render(size: u32, n_objects: usize, rng: &mut Rng) -> Scene {
    render_with(size, n_objects, rng, None)
}

/// [`render`], with object `recolor.0` drawn in colour `COLORS[recolor.1]` instead of the one
/// drawn for it (every random draw is still made, so the rest of the scene is the same; the
/// caption names the new colour).
pub fn render_with(size: u32, n_objects: usize, rng: &mut Rng, recolor: Option<(usize, usize)>) -> Scene {
    render_from(size, n_objects, rng, recolor, &FULL)
}

fn render_from(size: u32, n_objects: usize, rng: &mut Rng, recolor: Option<(usize, usize)>, palette: &Palette) -> Scene {
    let s = size as usize;
    let mut px = vec![0u8; s * s * 3];
    // Background: a soft two-colour gradient with stripes, never close to object colours.
    let base = [150 + rng.below(60) as i32, 150 + rng.below(60) as i32, 150 + rng.below(60) as i32];
    let stripe = 3 + rng.below(6) as usize;
    let angle = rng.below(2);
    for y in 0..s {
        for x in 0..s {
            let t = if angle == 0 { x } else { y };
            let shade = if (t / stripe).is_multiple_of(2) { 10 } else { -10 };
            let grad = (y as i32 * 20) / s as i32;
            for c in 0..3 {
                px[(y * s + x) * 3 + c] = (base[c] + shade - grad).clamp(0, 255) as u8;
            }
        }
    }
    let mut objects: Vec<Object> = Vec::new();
    let n = n_objects.clamp(1, 3);
    let mut tries = 0;
    while objects.len() < n && tries < 200 {
        tries += 1;
        let shape = SHAPES[palette.shapes[rng.below(palette.shapes.len() as u64) as usize]];
        let drawn = palette.colors[rng.below(palette.colors.len() as u64) as usize];
        let (color, rgb) = match recolor {
            Some((o, c)) if o == objects.len() => COLORS[c % COLORS.len()],
            _ => COLORS[drawn],
        };
        let large = palette.sizes[rng.below(palette.sizes.len() as u64) as usize];
        let frac = if large { 0.42 + 0.08 * rng.unit() } else { 0.28 + 0.06 * rng.unit() };
        let side = ((size as f64) * frac).round().max(4.0) as u32;
        let x0 = rng.below((size - side) as u64 + 1) as u32;
        let y0 = rng.below((size - side) as u64 + 1) as u32;
        let bbox = [x0, y0, x0 + side, y0 + side];
        let overlaps = objects
            .iter()
            .any(|o| bbox[0] < o.bbox[2] + 1 && o.bbox[0] < bbox[2] + 1 && bbox[1] < o.bbox[3] + 1 && o.bbox[1] < bbox[3] + 1);
        if overlaps {
            continue;
        }
        let half = side as f64 / 2.0;
        let (cx, cy) = (x0 as f64 + half, y0 as f64 + half);
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                let (dx, dy) = ((x as f64 + 0.5 - cx) / half, (y as f64 + 0.5 - cy) / half);
                if inside(shape, dx, dy) {
                    let i = (y as usize * s + x as usize) * 3;
                    px[i..i + 3].copy_from_slice(&rgb);
                }
            }
        }
        objects.push(Object {
            shape: shape.into(),
            color: color.into(),
            size: if large { "large" } else { "small" }.into(),
            bbox,
            word_indices: vec![],
        });
    }
    let caption = caption_for(&mut objects, rng);
    Scene { pixels: px, size, caption, objects }
}

/// Builds "a large red circle left of a small blue square"-style captions and records which
/// words name which object.
fn caption_for(objects: &mut [Object], rng: &mut Rng) -> String {
    let mut words: Vec<String> = Vec::new();
    let phrase = |o: &mut Object, words: &mut Vec<String>| {
        words.push("a".into());
        let start = words.len();
        words.push(o.size.clone());
        words.push(o.color.clone());
        words.push(o.shape.clone());
        o.word_indices = (start..start + 3).collect();
    };
    match objects.len() {
        1 => phrase(&mut objects[0], &mut words),
        _ => {
            let (a, b) = (0, 1);
            let (ca, cb) = (center(&objects[a]), center(&objects[b]));
            let rel = if (ca.0 - cb.0).abs() >= (ca.1 - cb.1).abs() {
                if ca.0 < cb.0 {
                    "left of"
                } else {
                    "right of"
                }
            } else if ca.1 < cb.1 {
                "above"
            } else {
                "below"
            };
            phrase(&mut objects[a], &mut words);
            words.extend(rel.split(' ').map(String::from));
            phrase(&mut objects[b], &mut words);
            if objects.len() == 3 {
                words.push(if rng.below(2) == 0 { "and" } else { "with" }.into());
                phrase(&mut objects[2], &mut words);
            }
        }
    }
    words.join(" ")
}

fn center(o: &Object) -> (f64, f64) {
    ((o.bbox[0] + o.bbox[2]) as f64 / 2.0, (o.bbox[1] + o.bbox[3]) as f64 / 2.0)
}

/// Scene `index` of the world with `seed`: its own stream, so any subset renders identically.
pub fn scene(seed: u64, index: u64, size: u32) -> Scene {
    scene_with(seed, index, size, None)
}

/// Scene `index` of `world` with `seed` ([`World::Shapes`] is [`scene`]).
pub fn scene_in(world: World, seed: u64, index: u64, size: u32) -> Scene {
    match world {
        World::Shapes => scene(seed, index, size),
        World::Relations => {
            let mut rng = Rng::new(seed.wrapping_mul(0x100_0000_01B3) ^ index.wrapping_mul(0x9E37_79B9) ^ 0x5E1A_7105);
            render_from(size, 2, &mut rng, None, &RELATIONS)
        }
    }
}

/// The caption with its relation reversed ("left of" ↔ "right of", "above" ↔ "below"), or
/// None when it names no relation: the hard negative of the relation test.
pub fn swap_relation(caption: &str) -> Option<String> {
    for (a, b) in [(" left of ", " right of "), (" right of ", " left of "), (" above ", " below "), (" below ", " above ")] {
        if let Some(i) = caption.find(a) {
            return Some(format!("{}{b}{}", &caption[..i], &caption[i + a.len()..]));
        }
    }
    None
}

/// [`scene`] with one object recoloured (see [`render_with`]).
pub fn scene_with(seed: u64, index: u64, size: u32, recolor: Option<(usize, usize)>) -> Scene {
    let mut rng = Rng::new(seed.wrapping_mul(0x100_0000_01B3) ^ index.wrapping_mul(0x9E37_79B9));
    // Half the scenes hold one object, a third two, a sixth three.
    let n = match rng.below(6) {
        0..=2 => 1,
        3 | 4 => 2,
        _ => 3,
    };
    render_with(size, n, &mut rng, recolor)
}

#[cfg(test)]
mod world_tests {
    use super::*;

    /// Every relations-world scene holds two objects of the 3 × 3 kinds and names their
    /// relation, which agrees with the boxes; reversing it gives the other caption.
    #[test]
    fn relations_scenes_name_a_relation_the_boxes_agree_with() {
        for i in 0..300 {
            let sc = scene_in(World::Relations, 7, i, 64);
            assert_eq!(sc.objects.len(), 2, "scene {i}: {}", sc.caption);
            for o in &sc.objects {
                assert!(
                    ["circle", "square", "triangle"].contains(&o.shape.as_str()) && ["red", "green", "blue"].contains(&o.color.as_str())
                );
            }
            let (a, b) = (center(&sc.objects[0]), center(&sc.objects[1]));
            let rel = if sc.caption.contains(" left of ") {
                a.0 < b.0
            } else if sc.caption.contains(" right of ") {
                a.0 > b.0
            } else if sc.caption.contains(" above ") {
                a.1 < b.1
            } else {
                assert!(sc.caption.contains(" below "), "{}", sc.caption);
                a.1 > b.1
            };
            assert!(rel, "{}: {:?}", sc.caption, sc.objects);
            let sw = swap_relation(&sc.caption).unwrap();
            assert_ne!(sw, sc.caption);
            assert_eq!(swap_relation(&sw).unwrap(), sc.caption);
        }
    }
}
