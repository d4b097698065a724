/** A syntax or content error in an import file, with where it is (1-based line and column). */
export class ParseError extends Error {
  readonly line: number;
  readonly column: number;

  constructor(message: string, line: number, column: number) {
    super(message);
    this.line = line;
    this.column = column;
  }
}

/** Line and column (1-based, columns in UTF-16 units) of `offset` in `text`. */
export function position(text: string, offset: number): { line: number; column: number } {
  const starts = lineStarts(text);
  // The last line start at or before `offset` (a newline at i < offset starts line i + 2 at i + 1).
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= offset) lo = mid;
    else hi = mid - 1;
  }
  return { line: lo + 1, column: offset - starts[lo]! + 1 };
}

/**
 * The offsets where each line of `text` starts, for the last text asked about: parsers ask for the
 * line of every entry, and a scan from the start each time made a 700 KB import file take minutes.
 */
let last: { text: string; starts: number[] } | null = null;
function lineStarts(text: string): number[] {
  if (last !== null && last.text === text) return last.starts;
  const starts = [0];
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) starts.push(i + 1);
  last = { text, starts };
  return starts;
}

/** A ParseError at `offset` of `text`. */
export function errorAt(text: string, offset: number, message: string): ParseError {
  const p = position(text, offset);
  return new ParseError(message, p.line, p.column);
}
