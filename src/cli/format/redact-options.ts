/** Hiding what a mistyped option carried in commander's error messages. */

/**
 * Commander echoes an unknown option whole (`unknown option '--valeu=VALUE'`, `'-vVALUE'`, then at most
 * an unquoted "(Did you mean …)" line): what follows "=", or a short option's first letter, is hidden up
 * to the last quote, since it may be a secret value or a token, with quotes and line breaks of its own.
 */
export function redactOptionValues(s: string): string {
  return s.replace(/'(--?[^'=\s]+)=[\s\S]*'/, "'$1=…'").replace(/(unknown option )'(-[^-'\s])[^'][\s\S]*'/, "$1'$2…'");
}
