//! The CPU backend's recorded programs (`backend::cpu::program`): ops read their buffers when the
//! program runs, not when it is recorded (one recording serves every step, as on the GPU); a
//! buffer read and written by one op is refused, an in-place update is not; copies
//! (checkpoints) between and within buffers, and their bounds.

use webvlm::backend::cpu::program::{Buffer, Program, ProgramError};
use webvlm::backend::cpu::{elementwise, norm, ThreadPool};

const DIM: usize = 8;
const EPS: f32 = 1e-6;

/// `y = rms_norm(x) * w; residual += y`, recorded over the handles.
fn record_norm_add(p: &mut Program, x: &Buffer, w: &Buffer, y: &Buffer, residual: &Buffer) {
    let (x, w, y1) = (x.clone(), w.clone(), y.clone());
    p.push("rms_norm", move |pool| Ok(norm::rms_norm(pool, &x.read()?, &w.read()?, &mut y1.write()?, DIM, EPS)?));
    let (y, residual) = (y.clone(), residual.clone());
    p.push("add", move |pool| Ok(elementwise::add_inplace(pool, &y.read()?, &mut residual.write()?)?));
}

fn values(seed: f32) -> Vec<f32> {
    (0..2 * DIM).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
}

#[test]
fn ops_read_their_buffers_when_the_program_runs() {
    let pool = ThreadPool::new(2).unwrap();
    let (x, w) = (Buffer::from_f32("x", &values(1.0)), Buffer::from_f32("w", &values(2.0)[..DIM]));
    let (y, residual) = (Buffer::zeroed("y", 2 * DIM as u64 * 4).unwrap(), Buffer::from_f32("residual", &values(3.0)));
    let mut p = Program::new();
    record_norm_add(&mut p, &x, &w, &y, &residual);
    assert_eq!(p.len(), 2);

    let mut want = values(3.0);
    for seed in [1.0, 5.0] {
        // The host writes the step's input between runs, as a step writes positions and ids.
        x.write().unwrap().copy_from_slice(&values(seed));
        p.run(&pool).unwrap();
        let mut direct = vec![0.0; 2 * DIM];
        norm::rms_norm(&pool, &values(seed), &values(2.0)[..DIM], &mut direct, DIM, EPS).unwrap();
        elementwise::add_inplace(&pool, &direct, &mut want).unwrap();
        assert_eq!(&*y.read().unwrap(), direct.as_slice(), "the norm of the x written before run (seed {seed})");
        assert_eq!(&*residual.read().unwrap(), want.as_slice(), "the residual updated in place (seed {seed})");
    }
}

#[test]
fn a_buffer_read_and_written_by_one_op_is_refused() {
    let pool = ThreadPool::new(1).unwrap();
    let (x, w) = (Buffer::from_f32("x", &values(1.0)), Buffer::from_f32("w", &values(2.0)[..DIM]));
    let mut p = Program::new();
    // x as the norm's input and its output.
    record_norm_add(&mut p, &x, &w, &x, &Buffer::from_f32("residual", &values(3.0)));
    match p.run(&pool) {
        Err(ProgramError::Op { index: 0, name: "rms_norm", source }) => {
            assert!(matches!(*source, ProgramError::Aliased { ref label } if label == "x"), "{source}")
        }
        other => panic!("expected the aliased norm to fail, got {other:?}"),
    }
    assert_eq!(&*x.read().unwrap(), values(1.0).as_slice(), "nothing was written");
}

#[test]
fn copies_between_and_within_buffers_check_their_ranges() {
    let pool = ThreadPool::new(1).unwrap();
    let (a, b) = (Buffer::from_f32("a", &[1.0, 2.0, 3.0, 4.0]), Buffer::zeroed("b", 16).unwrap());
    let mut p = Program::new();
    p.copy(&a, 4, &b, 8, 8).unwrap();
    p.copy(&a, 0, &a, 8, 8).unwrap();
    p.run(&pool).unwrap();
    assert_eq!(&*b.read().unwrap(), &[0.0, 0.0, 2.0, 3.0]);
    assert_eq!(&*a.read().unwrap(), &[1.0, 2.0, 1.0, 2.0]);

    let failure = |src: &Buffer, src_offset, dst: &Buffer, dst_offset, size| {
        let mut p = Program::new();
        p.copy(src, src_offset, dst, dst_offset, size).unwrap();
        match p.run(&pool) {
            Err(ProgramError::Op { source, .. }) => *source,
            other => panic!("expected a failed copy, got {other:?}"),
        }
    };
    assert!(matches!(failure(&a, 0, &a, 4, 8), ProgramError::Aliased { .. }), "overlapping ranges of one buffer");
    assert!(matches!(failure(&a, 8, &b, 0, 12), ProgramError::OutOfRange { end: 20, size: 16, .. }), "past the source");
    assert!(matches!(failure(&a, 0, &b, 12, 8), ProgramError::OutOfRange { end: 20, size: 16, .. }), "past the destination");
    assert!(matches!(Program::new().copy(&a, 2, &b, 0, 4), Err(ProgramError::Unaligned { bytes: 2, .. })));
    assert!(matches!(Buffer::zeroed("odd", 6), Err(ProgramError::Unaligned { bytes: 6, .. })));
}
