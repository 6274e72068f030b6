// The synthetic German -> English corpus (src/data/synthetic_translation.cpp): deterministic, a function from
// source to target, with reordering and case marking that a word-by-word model cannot learn.
#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include "longseq/common.h"
#include "longseq/synthetic_translation.h"

namespace synthetic_translation_test {

using namespace longseq;

std::vector<std::string> words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) {
    while (!w.empty() && (w.back() == '.' || w.back() == ',')) w.pop_back();
    out.push_back(w);
  }
  return out;
}

TEST(SyntheticTranslation, DeterministicInTheSeed) {
  const auto a = synthetic_translation_corpus(500, 1), b = synthetic_translation_corpus(500, 1);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.target, b.target);
  const auto c = synthetic_translation_corpus(500, 2);
  EXPECT_NE(a.source, c.source);
  ASSERT_EQ(a.source.size(), 500u);
  ASSERT_EQ(a.target.size(), 500u);
  EXPECT_EQ(a.dropped_empty, 0);
  EXPECT_TRUE(synthetic_translation_corpus(0, 1).source.empty());
  EXPECT_THROW(synthetic_translation_corpus(-1, 1), Error);
  for (const auto& s : a.source) {
    const auto n = words(s).size();
    EXPECT_GE(n, 4u) << s;
    EXPECT_LE(n, 25u) << s;
  }
}

// Over two seeds' corpora, a source sentence always has the same translation (the seed draws, the grammar maps).
TEST(SyntheticTranslation, EachSourceHasOneTranslation) {
  std::map<std::string, std::string> seen;
  int64_t repeats = 0;
  for (uint64_t seed : {5u, 6u}) {
    const auto p = synthetic_translation_corpus(20000, seed);
    for (size_t i = 0; i < p.source.size(); ++i) {
      auto [it, fresh] = seen.emplace(p.source[i], p.target[i]);
      repeats += !fresh;
      ASSERT_EQ(it->second, p.target[i]) << "source: " << p.source[i];
    }
  }
  EXPECT_GT(repeats, 10) << "short sentences recur, so the check has teeth";
  EXPECT_GT(seen.size(), 30000u) << "and most sentences are distinct";
}

// The nouns of a sentence appear in another order in the translation for a good share of the pairs (object-first
// German, dative before accusative), so a word-by-word gloss fails.
TEST(SyntheticTranslation, TranslationReordersNouns) {
  std::map<std::string, std::string> gloss;
  for (const auto& [de, en] : synthetic_translation_nouns()) gloss[de] = en;
  const auto p = synthetic_translation_corpus(4000, 9);
  int64_t multi = 0, reordered = 0;
  for (size_t i = 0; i < p.source.size(); ++i) {
    std::vector<std::string> glossed, english;
    for (const auto& w : words(p.source[i]))
      if (gloss.count(w)) glossed.push_back(gloss[w]);
    std::map<std::string, int> is_noun;
    for (const auto& [de, en] : gloss) is_noun[en] = 1;
    for (const auto& w : words(p.target[i]))
      if (is_noun.count(w)) english.push_back(w);
    ASSERT_EQ(glossed.size(), english.size()) << p.source[i] << " | " << p.target[i];
    if (glossed.size() < 2) continue;
    ++multi;
    reordered += glossed != english;
  }
  EXPECT_GT(multi, 1000);
  EXPECT_GT(reordered, multi / 10) << reordered << " of " << multi;
  EXPECT_LT(reordered, multi) << "the canonical order stays common";
}

// A masculine noun takes der as subject and den as object: the article, not the position, gives the role.
TEST(SyntheticTranslation, CaseMarkingChangesTheArticle) {
  const auto p = synthetic_translation_corpus(4000, 10);
  int64_t subject = 0, object = 0, object_first = 0;
  for (size_t i = 0; i < p.source.size(); ++i) {
    const auto& de = p.source[i];
    const auto& en = p.target[i];
    if (de.rfind("Der Hund ", 0) == 0 && en.rfind("The dog ", 0) == 0) ++subject;
    if (de.find("den Hund") != std::string::npos) ++object;
    // "Den Hund sieht die Frau." -> "The woman sees the dog.": first in German, not the subject in English.
    if (de.rfind("Den Hund ", 0) == 0) {
      ++object_first;
      EXPECT_NE(en.rfind("The dog ", 0), 0u) << de << " | " << en;
      EXPECT_NE(en.find(" the dog"), std::string::npos) << de << " | " << en;
    }
  }
  EXPECT_GT(subject, 0);
  EXPECT_GT(object, 0);
  EXPECT_GT(object_first, 0);
}

}  // namespace synthetic_translation_test
