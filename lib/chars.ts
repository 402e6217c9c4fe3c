/**
 * Characters as people read them in pictures and listings: whitespace made
 * visible, and a coarse class for colouring.
 *
 * @module
 */

const VISIBLE: Record<string, string> = { " ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍" };

/** The character, or a visible symbol for space (␣), newline (↵), tab (⇥) and other controls. */
export function visibleChar(ch: string): string {
  if (ch in VISIBLE) return VISIBLE[ch];
  const cp = ch.codePointAt(0)!;
  if (cp < 32) return String.fromCodePoint(0x2400 + cp); // the Unicode control pictures
  if (cp === 127) return "␡";
  return ch;
}

/** A text with each character made visible, newlines too (one line). */
export function visibleText(text: string): string {
  return Array.from(text, visibleChar).join("");
}

/** The classes characters are coloured by. */
export const CHAR_CLASSES = ["lower", "upper", "digit", "punctuation", "whitespace"] as const;
/** One of {@link CHAR_CLASSES}. */
export type CharClass = typeof CHAR_CLASSES[number];

/**
 * Upper-case letter, other letter (lower case, and letters without case
 * such as CJK), digit, whitespace, or punctuation (everything else).
 */
export function charClass(ch: string): CharClass {
  if (/^\s$/u.test(ch)) return "whitespace";
  if (/^\p{Nd}$/u.test(ch)) return "digit";
  if (/^\p{Lu}$/u.test(ch)) return "upper";
  if (/^\p{L}$/u.test(ch)) return "lower";
  return "punctuation";
}
