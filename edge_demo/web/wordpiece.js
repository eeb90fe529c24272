// BERT WordPiece tokenization in the browser, read from a Hugging Face `tokenizers` tokenizer.json, giving the
// ids the Python library gives: special tokens matched in the raw text, then the BertNormalizer (clean text,
// spaces around CJK characters, accent strip by NFD, lowercase per character), the BertPreTokenizer (split on
// whitespace, punctuation split off), greedy longest-match WordPiece with "##" continuations, truncation to
// maxLength - 2 pieces, [CLS] ... [SEP] and optional padding with [PAD].

export class TokenizerError extends Error {}

const PUNCTUATION = /[\p{P}]/u;
const ASCII_PUNCTUATION = /[!-/:-@[-`{-~]/;
const CONTROL = /\p{C}/u;
const MARK_NONSPACING = /\p{Mn}/gu;
// Unicode White_Space (Rust's char::is_whitespace), which JavaScript's \s almost matches.
const WHITESPACE = /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;

function isCJK(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

export class WordPieceTokenizer {
  constructor(config) {
    const model = config.model || {};
    const normalizer = config.normalizer || {};
    const pre = config.pre_tokenizer || {};
    const problems = [["model", model.type, "WordPiece"], ["normalizer", normalizer.type, "BertNormalizer"],
      ["pre_tokenizer", pre.type, "BertPreTokenizer"]].filter(([, kind, wanted]) => kind !== wanted);
    if (problems.length) {
      throw new TokenizerError("tokenizer.json is not a BERT WordPiece tokenizer (" +
        problems.map(([what, kind]) => `${what} is ${kind}`).join(", ") + "): this page implements BERT WordPiece only");
    }
    this.vocab = new Map(Object.entries(model.vocab));
    this.unk = model.unk_token || "[UNK]";
    this.prefix = model.continuing_subword_prefix ?? "##";
    this.maxWordChars = model.max_input_chars_per_word || 100;
    this.cleanText = normalizer.clean_text !== false;
    this.chineseChars = normalizer.handle_chinese_chars !== false;
    this.lowercase = normalizer.lowercase !== false;
    this.stripAccents = normalizer.strip_accents ?? this.lowercase;
    this.special = (config.added_tokens || []).filter((t) => t.special).map((t) => [t.content, t.id])
      .sort((a, b) => b[0].length - a[0].length);
    for (const token of ["[CLS]", "[SEP]", "[PAD]", this.unk]) {
      if (!this.vocab.has(token)) throw new TokenizerError(`tokenizer.json has no ${token} token in its vocabulary`);
    }
  }

  static fromJSON(text) {
    let config;
    try {
      config = typeof text === "string" ? JSON.parse(text) : text;
    } catch (err) {
      throw new TokenizerError("tokenizer.json is not valid JSON: re-create the bundle");
    }
    return new WordPieceTokenizer(config);
  }

  normalize(text) {
    let out = "";
    for (const ch of text) {
      const cp = ch.codePointAt(0);
      if (this.cleanText) {
        if (cp === 0 || cp === 0xfffd || (CONTROL.test(ch) && !"\t\n\r".includes(ch))) continue;
        if (WHITESPACE.test(ch)) { out += " "; continue; }
      }
      out += this.chineseChars && isCJK(cp) ? ` ${ch} ` : ch;
    }
    if (this.stripAccents) out = out.normalize("NFD").replace(MARK_NONSPACING, "");
    if (this.lowercase) out = Array.from(out, (ch) => ch.toLowerCase()).join("");  // per character, as Rust does
    return out;
  }

  preTokenize(text) {
    const words = [];
    let word = "";
    for (const ch of text) {
      if (WHITESPACE.test(ch)) {
        if (word) words.push(word);
        word = "";
      } else if (PUNCTUATION.test(ch) || ASCII_PUNCTUATION.test(ch)) {
        if (word) words.push(word);
        words.push(ch);
        word = "";
      } else {
        word += ch;
      }
    }
    if (word) words.push(word);
    return words;
  }

  wordPiece(word) {
    const chars = Array.from(word);
    if (chars.length > this.maxWordChars) return [this.unk];
    const pieces = [];
    for (let start = 0; start < chars.length;) {
      let end = chars.length, found = null;
      while (start < end) {
        const piece = (start > 0 ? this.prefix : "") + chars.slice(start, end).join("");
        if (this.vocab.has(piece)) { found = piece; break; }
        end--;
      }
      if (found === null) return [this.unk];
      pieces.push(found);
      start = end;
    }
    return pieces;
  }

  // Raw text -> word-piece tokens, special tokens written in the text kept whole.
  tokenize(text) {
    const tokens = [];
    let rest = text;
    while (rest.length) {
      let at = -1, match = null;
      for (const [content] of this.special) {
        const i = rest.indexOf(content);
        if (i >= 0 && (at < 0 || i < at)) { at = i; match = content; }
      }
      const plain = at < 0 ? rest : rest.slice(0, at);
      for (const word of this.preTokenize(this.normalize(plain))) tokens.push(...this.wordPiece(word));
      if (at < 0) break;
      tokens.push(match);
      rest = rest.slice(at + match.length);
    }
    return tokens;
  }

  idOf(token) {
    const special = this.special.find(([content]) => content === token);
    return special ? special[1] : this.vocab.get(token) ?? this.vocab.get(this.unk);
  }

  // {tokens, inputIds, attentionMask, tokenTypeIds}: at most maxLength ids, padded to padTo when given.
  encode(text, { maxLength = 128, padTo = 0 } = {}) {
    if (maxLength < 2) throw new TokenizerError(`maxLength must be at least 2, got ${maxLength}`);
    return this.frame(this.tokenize(String(text)).slice(0, maxLength - 2), padTo);
  }

  // A long text as the tokenizers library's overflowing encodings with stride 0: consecutive windows of
  // maxLength - 2 pieces, each framed [CLS] ... [SEP]; the first maxWindows of them (0: all), all padded to the
  // first (the longest), or to padTo when longer, so that they run as one batch.
  encodeWindows(text, { maxLength = 128, maxWindows = 0, padTo = 0 } = {}) {
    if (maxLength < 3) throw new TokenizerError(`maxLength must be at least 3 to hold a window, got ${maxLength}`);
    const pieces = this.tokenize(String(text));
    const size = maxLength - 2;
    const longest = Math.max(padTo, Math.min(pieces.length, size) + 2);
    const windows = [];
    for (let start = 0; start === 0 || start < pieces.length; start += size) {
      if (maxWindows && windows.length === maxWindows) break;
      windows.push(this.frame(pieces.slice(start, start + size), longest));
    }
    return windows;
  }

  frame(pieces, padTo) {
    const tokens = ["[CLS]", ...pieces, "[SEP]"];
    const inputIds = tokens.map((t) => this.idOf(t));
    const attentionMask = inputIds.map(() => 1);
    const pad = this.idOf("[PAD]");
    while (inputIds.length < padTo) {
      tokens.push("[PAD]");
      inputIds.push(pad);
      attentionMask.push(0);
    }
    return { tokens, inputIds, attentionMask, tokenTypeIds: inputIds.map(() => 0) };
  }
}
