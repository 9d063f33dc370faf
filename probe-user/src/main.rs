static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));
fn main(){ println!("{}", PROGRAM.len()); }
