/**
 * The static page that shows a checkpoint's pictures together, each with its
 * line of explanation: plain HTML with the SVGs beside it, no scripts, no
 * network, so it opens from disk.
 *
 * @module
 */
import type { Picture } from "./pictures.ts";

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.codePointAt(0)};`);
}

/** The page: a heading, the notes, then each picture (`<name>.svg` beside the page) under its title. */
export function indexHtml(
  heading: { title: string; about: string[] },
  pictures: Picture[],
  notes: string[],
): string {
  const figures = pictures.map((p) => `
<section id="${p.name}">
  <h2>${escapeHtml(p.title)}</h2>
  <p>${escapeHtml(p.caption)}</p>
  <div class="picture"><img src="${p.name}.svg" alt="${escapeHtml(p.title)}"></div>
</section>`).join("\n");
  const contents = pictures.map((p) => `<a href="#${p.name}">${escapeHtml(p.title)}</a>`)
    .join(" · ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${escapeHtml(heading.title)}</title>
<style>
  body { font-family: Helvetica, Arial, "Liberation Sans", sans-serif; margin: 24px; color: #222; }
  h1 { font-size: 22px; margin: 0 0 6px; }
  h2 { font-size: 18px; margin: 32px 0 4px; }
  p { max-width: 60em; line-height: 1.4; margin: 4px 0 10px; }
  .about { color: #555; margin: 2px 0; }
  .picture { overflow-x: auto; }
  .picture img { display: block; }
  ul { color: #444; }
</style>
</head>
<body>
<h1>${escapeHtml(heading.title)}</h1>
${heading.about.map((line) => `<p class="about">${escapeHtml(line)}</p>`).join("\n")}
<ul>
${notes.map((n) => `  <li>${escapeHtml(n)}</li>`).join("\n")}
</ul>
<p>${contents}</p>
${figures}
</body>
</html>
`;
}
