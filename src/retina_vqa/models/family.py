"""The model family of a checkpoint (`Family`), and what differs between the families, side by side.

BLIP VQA (``"blip"``) reads pixels through its own image encoder, tokenises the question as a BERT sentence and
starts answers at ``[DEC]``; BLIP-2 and InstructBLIP (``"blip-2"``, ``"instructblip"``) read the image through
``<image>`` placeholders in a prompt (`models.blip2.PromptLayout`) and end answers with eos. A run, the Python API
and predict build one `Family` from the checkpoint's config and ask it, instead of probing the model:

* `Family.layout`: the prompt layout (None for BLIP);
* `Family.tokenize`: the text of a row as training and answering tokenise it (`tokenize_questions_and_answers`,
  `tokenize_prompts_and_answers`, both here);
* `answer_token_budget`: how many answer tokens ``--max_answer_length`` leaves, the one place where the families'
  counting differs (BLIP counts its ``[DEC]`` start in the length, BLIP-2 counts the answer and eos).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .blip2 import FAMILIES, PromptLayout, format_prompts, model_family


def answer_token_budget(family: str, max_answer_length: int) -> int:
    """The answer tokens, end token included, that `max_answer_length` leaves a `family` model: BLIP's length (like
    transformers' ``max_length`` of its decoder) counts the ``[DEC]`` start too; BLIP-2's counts the answer and eos
    (``max_new_tokens``)."""
    budget = max_answer_length - 1 if family == "blip" else max_answer_length
    if budget < 1:
        raise ValueError(f"--max_answer_length {max_answer_length} leaves no answer token for a {family} model.")
    return budget


@dataclass(frozen=True)
class Family:
    """One checkpoint's family (``name``) and, for BLIP-2 / InstructBLIP, where its prompt puts the image."""

    name: str
    layout: PromptLayout | None = None

    @classmethod
    def of(cls, config: Any, processor: Any = None) -> Family:
        """The family of `config`; BLIP-2 / InstructBLIP need the `processor` to check and build the layout."""
        name = model_family(config)
        if name == "blip":
            return cls(name)
        if processor is None:
            raise ValueError(f"A {name} model needs its processor to place the image tokens.")
        return cls(name, PromptLayout.from_model(config, processor))

    @property
    def is_blip(self) -> bool:
        return self.layout is None

    def answer_tokens(self, max_answer_length: int) -> int:
        """`answer_token_budget` of this family."""
        return answer_token_budget(self.name, max_answer_length)

    def pad_token_id(self, model: Any) -> int:
        """The id that pads generated answers."""
        return model.config.text_config.pad_token_id if self.layout is None else self.layout.pad_token_id

    def tokenize(
        self,
        examples: dict[str, list],
        processor: Any,
        question_column: str,
        answer_column: str | None,
        max_question_length: int,
        max_answer_length: int,
        prompt_template: str | None = None,
    ) -> dict[str, list[list[int]]]:
        """A batch of rows tokenised as this family trains and answers."""
        if self.layout is None:  # BLIP VQA: question and [DEC] answer [SEP]; a processor or its tokenizer
            tokenizer = getattr(processor, "tokenizer", processor)
            return tokenize_questions_and_answers(
                examples, tokenizer, question_column, answer_column, max_question_length, max_answer_length
            )
        return tokenize_prompts_and_answers(  # BLIP-2 / InstructBLIP: <image> placeholders + prompt, answer + eos
            examples,
            processor,
            self.layout,
            question_column,
            answer_column,
            prompt_template,
            max_question_length,
            max_answer_length,
        )


def tokenize_questions_and_answers(
    examples: dict[str, list],
    tokenizer,
    question_column: str,
    answer_column: str | None,
    max_question_length: int,
    max_answer_length: int,
) -> dict[str, list[list[int]]]:
    """Question ids (``[CLS] q [SEP]``) and, when answers are given, decoder ids (``[DEC] a [SEP]``).

    The answer is tokenised without special tokens and framed here, so the decoder input is ``[DEC]`` +
    answer + ``[SEP]`` whatever special tokens the tokenizer would add itself, truncated to
    ``max_answer_length`` tokens in all.
    """
    # Empty text is tokenised as such here and reported by validation, which runs on the tokenised rows.
    questions = [(q or "").strip() for q in examples[question_column]]
    encoded = tokenizer(questions, truncation=True, max_length=max_question_length, return_token_type_ids=False)
    result = {"input_ids": encoded["input_ids"]}
    if answer_column is not None:
        answers = [(a or "").strip() for a in examples[answer_column]]
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
        # BLIP's decoder starts from [DEC] (the bos token), as generate() does, and stops at [SEP].
        start, end = tokenizer.bos_token_id, tokenizer.sep_token_id
        room = answer_token_budget("blip", max_answer_length) - 1  # the words; [SEP] ends them
        result["decoder_input_ids"] = [[start, *ids[:room], end] for ids in answer_ids]
        # For --train_sampling_strategy group_by_length: most answers are 1-3 words, a few are 30; batching
        # by length keeps the short ones from being padded to the long ones.
        result["length"] = [
            len(q) + len(a) for q, a in zip(result["input_ids"], result["decoder_input_ids"], strict=True)
        ]
    return result


def tokenize_prompts_and_answers(
    examples: dict[str, list],
    processor: Any,
    layout: PromptLayout,
    question_column: str,
    answer_column: str | None,
    prompt_template: str,
    max_question_length: int,
    max_answer_length: int,
) -> dict[str, list[list[int]]]:
    """Per row: ``input_ids`` (``<image>`` x N, then the prompt as the tokenizer frames it), ``answer_ids``
    (answer + eos) when answers are given, and for InstructBLIP ``qformer_input_ids`` (the Q-Former's prompt).

    The prompt keeps at most ``max_question_length`` tokens, the answer ``max_answer_length`` (eos included):
    truncation never touches the placeholders.
    """
    tokenizer = processor.tokenizer
    prompts = format_prompts(examples[question_column], prompt_template)
    text = tokenizer(prompts, truncation=True, max_length=max_question_length)["input_ids"]
    images = [layout.image_token_id] * layout.num_query_tokens
    result: dict[str, list[list[int]]] = {"input_ids": [images + ids for ids in text]}
    if layout.instruct:
        result["qformer_input_ids"] = processor.qformer_tokenizer(
            prompts, truncation=True, max_length=max_question_length
        )["input_ids"]
    if answer_column is not None:
        answers = tokenizer([(a or "").strip() for a in examples[answer_column]], add_special_tokens=False)["input_ids"]
        room = answer_token_budget(FAMILIES[1], max_answer_length) - 1  # the words; eos ends them
        result["answer_ids"] = [ids[:room] + [layout.eos_token_id] for ids in answers]
        result["length"] = [len(q) + len(a) for q, a in zip(result["input_ids"], result["answer_ids"], strict=True)]
    return result
