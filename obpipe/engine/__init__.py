"""The engine: everything that is not science. Blockwise mapping of a stage's block
function over the cube, region writes, block registers and completion records
(:mod:`obpipe.engine.blockwise`), process pools (:mod:`obpipe.engine.pools`), schedulers and
progress (:mod:`obpipe.engine.schedulers`), the run context (:mod:`obpipe.engine.context`)."""
