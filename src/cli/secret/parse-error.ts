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
  let line = 1;
  let start = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      start = i + 1;
    }
  }
  return { line, column: offset - start + 1 };
}

/** A ParseError at `offset` of `text`. */
export function errorAt(text: string, offset: number, message: string): ParseError {
  const p = position(text, offset);
  return new ParseError(message, p.line, p.column);
}
